"""Two runs on one run_dir: the second exits 2 naming the first's pid and host, and touches nothing; when rank 0 of a
multi-process run cannot take the lock, every rank exits (none waits in a collective for rank 0)."""
from __future__ import annotations

import json
import signal
import socket

from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR, EXIT_SIGNAL_CHECKPOINTED
from tests.helpers import FAST, TINY_RECIPE, data_overrides, kill_session, losses, run_train, start_train
from tests.proc_watch import Watched, hold_lock_elsewhere, start_ranks


def test_second_run_on_a_busy_run_dir_exits_2_naming_the_holder(tiny_data, tmp_path):
    overrides = [*FAST, *data_overrides(tiny_data), f"run_dir={tmp_path}"]
    first = Watched(start_train([*overrides, "train.steps=500"]))
    try:
        first.wait_for("step 1 ", timeout=180)
        second = run_train([*overrides, "train.steps=5"])
        assert second.returncode == EXIT_CONFIG_ERROR, second.stdout[-3000:] + second.stderr[-3000:]
        lock = tmp_path / ".megafin.lock"
        assert second.stderr.splitlines() == [
            f"megafin: run_dir {tmp_path} is in use by pid {first.proc.pid} on host {socket.gethostname()} since "
            f"{json.loads(lock.read_text())['started']} (lock file {lock}): "
            f"wait for that run to end, stop it, or use another run_dir"]
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish(timeout=120) == EXIT_SIGNAL_CHECKPOINTED, first.output()[-3000:]
    finally:
        kill_session(first.proc)
    # The first run's record is whole: every step once, in order (the second run wrote nothing).
    steps = sorted(losses(tmp_path))
    assert steps == list(range(1, len(steps) + 1))


def test_every_rank_exits_when_rank_0_cannot_take_the_lock(tiny_data, tmp_path):
    """Two ranks started as srun starts them (no torchrun agent to stop rank 1 once rank 0 has left): each must
    learn that rank 0 did not get the lock and exit 2 by itself."""
    holder = hold_lock_elsewhere(tmp_path)
    ranks = [Watched(p) for p in start_ranks([*FAST, *data_overrides(tiny_data), f"run_dir={tmp_path}",
                                              "train.steps=5"], world=2, recipe=TINY_RECIPE)]
    try:
        codes = [rank.finish(timeout=180) for rank in ranks]
    finally:
        for rank in ranks:
            kill_session(rank.proc)
        holder.kill()
        holder.wait(timeout=30)
    out = [rank.output() for rank in ranks]
    assert codes == [EXIT_CONFIG_ERROR, EXIT_CONFIG_ERROR], out
    # One line, from rank 0, naming the holder; rank 1 says nothing.
    lock = tmp_path / ".megafin.lock"
    assert out[0].strip().splitlines() == [
        f"megafin: run_dir {tmp_path} is in use by pid {holder.pid} on host {socket.gethostname()} since "
        f"{json.loads(lock.read_text())['started']} (lock file {lock}): "
        f"wait for that run to end, stop it, or use another run_dir"], out
    assert out[1].strip() == "", out
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.yaml").exists()
