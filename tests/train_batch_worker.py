"""Several `megafin train` runs in one torchrun launch: torchrun's agent (~2 s) and every rank's imports (~5 s) are
paid once for all of them instead of once per run. Started by tests/helpers.py's `run_train_batch`:

    python -m torch.distributed.run --standalone --nproc-per-node N tests/train_batch_worker.py PLAN.json

PLAN.json is a list of {"name", "argv"} (argv as `megafin` takes it: ["train", RECIPE, key=value ...]). After a run
ends on every rank, `<name>.result.json` beside the plan holds its exit code (the largest of the ranks') and rank 0's
stdout and stderr. The default process group is this script's: megafin joins it and leaves it standing
(shutdown_distributed ends only a group it started), so consecutive runs meet the same ranks. The launch stops at the
first run that failed on any rank, since the ranks may then be at different places; runs without a result file were
not run, and the caller runs them on their own."""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import sys
import traceback
from pathlib import Path


def main(plan_path: str) -> int:
    import torch
    import torch.distributed as dist

    from megafin.cli import main as megafin_main

    plan = json.loads(Path(plan_path).read_text())
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank = dist.get_rank()
    for run in plan:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = megafin_main(run["argv"])
        except BaseException:  # the other ranks may wait in a collective: end the launch (torchrun ends them)
            sys.stderr.write(f"rank {rank}, run {run['name']}:\n{out.getvalue()}\n{err.getvalue()}\n"
                             f"{traceback.format_exc()}")
            sys.stderr.flush()
            os._exit(1)
        worst = torch.tensor([code], dtype=torch.int64)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        if rank == 0:
            result = Path(plan_path).parent / f"{run['name']}.result.json"
            partial = result.with_suffix(".partial")
            partial.write_text(json.dumps({"returncode": int(worst.item()), "stdout": out.getvalue(),
                                           "stderr": err.getvalue()}))
            partial.replace(result)
        if int(worst.item()) != 0:
            break
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # megafin's checkpoint saving may start spawn-mode workers: the guard is required
    sys.exit(main(sys.argv[1]))
