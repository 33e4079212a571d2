"""`megafin train`, with a real signal delivered from inside the DPO reference log-prob pass (a test driver).

The tiny preference data makes the pass last milliseconds, too short to hit from outside; this driver runs the pass
one micro-batch per chunk (so it has several chunks), sends the signal to its own process at a fixed point of the
pass, and then runs the real CLI. The handler, the pass and the training loop are megafin's own.

    python tests/e2e/signal_in_reference_pass.py MODE RECIPE key=value ...
    MODE: kill-after-chunk  SIGKILL right after the pass's first chunk file is complete
          term-at-start     SIGTERM as the pass starts: it stops before its next chunk, exit 75
          plain             no signal (the same chunking, so an interrupted pass can be continued)
"""
import os
import signal
import sys

import megafin.stages.preference.reference as dpo
from megafin.cli import main

if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    dpo.REFERENCE_CHUNK = 1
    if mode == "term-at-start":
        compute = dpo.PrecomputedReference._compute_cache

        def compute_after_sigterm(self, *a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            return compute(self, *a, **kw)

        dpo.PrecomputedReference._compute_cache = compute_after_sigterm
    elif mode == "kill-after-chunk":
        save = dpo._save_chunk

        def save_then_die(*a, **kw):
            save(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)

        dpo._save_chunk = save_then_die
    elif mode != "plain":
        sys.exit(f"unknown mode {mode!r}")
    sys.exit(main(["train", *args]))
