"""Multi-process faults (the slow ones, together): a rank SIGKILLed mid-run, torchrun's agent SIGKILLed, a peer that
hangs. The survivors must exit within a bounded time, nothing may be left running, and the job must be resumable.
(Under srun, on a real Slurm: tests/slurm/test_sbatch.py.)"""
from __future__ import annotations

import json
import signal
import time

import psutil
import pytest

from megafin.checkpoint.manager import latest_checkpoint, read_meta
from megafin.runtime.exit_codes import EXIT_SIGNAL_CHECKPOINTED
from tests.golden_recipes import GOLDEN, GOLDEN_REL, LAYOUT_REL, STEPS, recipe_overrides
from tests.helpers import TINY_RECIPE, assert_ok, kill_session, losses, run_train, start_train
from tests.proc_watch import Watched, alive, descendants, kill_all, start_ranks, wait_gone


def _ranks(agent_pid: int) -> dict[int, psutil.Process]:
    """torchrun's worker processes by rank (they run in sessions of their own, so not in the agent's group)."""
    found = {}
    for p in descendants(agent_pid):
        env = p.environ()
        if "RANK" in env and "megafin.train" in " ".join(p.cmdline()):
            found[int(env["RANK"])] = p
    return found


def test_rank_sigkilled_under_torchrun_survivors_exit_and_the_job_resumes(tiny_data, tmp_path):
    overrides = [*recipe_overrides("cpt", tiny_data, tmp_path), "checkpoint.interval=2"]
    agent = Watched(start_train(overrides, nproc=2))
    ranks = {}
    try:
        agent.wait_for("saved checkpoint", timeout=240)
        ranks = _ranks(agent.proc.pid)
        assert sorted(ranks) == [0, 1]
        ranks[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        assert agent.finish(timeout=120) != 0
        assert not wait_gone(lambda: alive(ranks.values()), timeout=10)
        assert time.time() - t0 < 60, agent.output()[-3000:]
    finally:
        kill_session(agent.proc)
        kill_all(ranks.values())
    assert read_meta(latest_checkpoint(tmp_path))["step"] < STEPS["cpt"], "the kill must land mid-run"
    assert_ok(run_train([*overrides, "train.resume=auto"], nproc=2))
    want, got = {int(k): v for k, v in json.loads(GOLDEN.read_text())["cpt"].items()}, losses(tmp_path)
    assert sorted(got) == sorted(want)
    for step in want:  # two data-parallel ranks against the single-process reference curve
        assert got[step] == pytest.approx(want[step], rel=GOLDEN_REL + LAYOUT_REL), f"step {step}: {got} vs {want}"


def test_torchrun_agent_sigkilled_ranks_checkpoint_and_exit(tiny_data, tmp_path):
    """torchrun starts each rank in its own session, so nothing reaches them when the agent dies: they used to train
    on as orphans (and hold the run_dir lock against the next attempt). Now each notices, checkpoints, exits 75."""
    agent = Watched(start_train([*recipe_overrides("cpt", tiny_data, tmp_path), "train.steps=500"], nproc=2))
    ranks = {}
    try:
        agent.wait_for("step 1 ", timeout=240)
        ranks = _ranks(agent.proc.pid)
        assert sorted(ranks) == [0, 1]
        agent.proc.send_signal(signal.SIGKILL)
        left = wait_gone(lambda: alive(ranks.values()), timeout=60)
        assert not left, agent.output()[-3000:]
        agent.wait_for("exit 75", timeout=10)  # the ranks still write to the dead agent's pipe
    finally:
        kill_session(agent.proc)
        kill_all(ranks.values())
    assert f"torchrun's agent (pid {agent.proc.pid}) has exited; stopping this rank" in agent.output()
    assert read_meta(latest_checkpoint(tmp_path))["step"] == max(losses(tmp_path))


def test_a_hung_peer_fails_the_survivor_after_the_collective_timeout(tiny_data, tmp_path):
    """A peer that stops answering (SIGSTOP here; a hung NFS read or a lost node alike) without closing its sockets:
    the survivor's next collective fails after train.collective_timeout_s, on megatron's data-parallel group too
    (it used to take megatron's own 30-minute default whatever the process group was given)."""
    timeout_s = 8
    procs = start_ranks([*recipe_overrides("cpt", tiny_data, tmp_path), "train.steps=500",
                         f"train.collective_timeout_s={timeout_s}"], world=2, recipe=TINY_RECIPE)
    survivor, hung = (Watched(p) for p in procs)
    try:
        survivor.wait_for("step 1 ", timeout=240)
        hung.proc.send_signal(signal.SIGSTOP)
        t0 = time.time()
        code = survivor.finish(timeout=timeout_s + 90)
        elapsed = time.time() - t0
    finally:
        for p in procs:
            kill_session(p)
    assert code != 0 and f"Timed out waiting {timeout_s * 1000}ms" in survivor.output(), survivor.output()[-3000:]
    assert elapsed < timeout_s + 60
    assert code != EXIT_SIGNAL_CHECKPOINTED
