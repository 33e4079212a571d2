"""`megafin train`, with a real signal delivered from inside the DPO reference log-prob pass (a test driver).

The tiny preference data makes the pass last milliseconds, too short to hit from outside; this driver sends the
signal to its own process at a fixed point of the pass and then runs the real CLI. The handler, the pass and the
training loop are megafin's own.

    python tests/e2e/signal_in_reference_pass.py term-at-start RECIPE key=value ...
        SIGTERM as the pass starts: the pass and step 1 finish, a checkpoint is written, exit 75.
    python tests/e2e/signal_in_reference_pass.py kill-after-shard RECIPE key=value ...
        SIGKILL right after this rank's shard of the cache is written, before the cache's meta.json.
"""
import os
import signal
import sys

import numpy as np

from megafin.cli import main
from megafin.train.dpo import DPOStage

if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "term-at-start":
        compute = DPOStage._compute_cache

        def compute_after_sigterm(self, *a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            return compute(self, *a, **kw)

        DPOStage._compute_cache = compute_after_sigterm
    elif mode == "kill-after-shard":
        savez = np.savez

        def savez_then_die(*a, **kw):
            savez(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)

        np.savez = savez_then_die
    else:
        sys.exit(f"unknown mode {mode!r}")
    sys.exit(main(["train", *args]))
