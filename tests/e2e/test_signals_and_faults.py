"""SIGTERM/SIGUSR1 save at the end of the step and exit 75; non-finite losses skip steps, then stop the run; a killed
trainer leaves no process behind; signals in the first step and inside the DPO reference pass stop cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megafin.checkpoint.manager import latest_checkpoint, read_meta
from megafin.runtime.exit_codes import EXIT_DIVERGED, EXIT_SIGNAL_CHECKPOINTED
from tests.golden_recipes import GOLDEN, GOLDEN_REL, STEPS, recipe_overrides
from tests.helpers import (FAST, REPO, assert_ok, data_overrides, kill_session, losses, run_train, start_train,
                           train_here)
from tests.proc_watch import Watched, in_session, wait_gone


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_mid_run_checkpoints_and_exits_with_documented_code(sig, tiny_data, tmp_path):
    proc = start_train([*FAST, *data_overrides(tiny_data), "train.steps=500", f"run_dir={tmp_path}"])
    try:
        deadline = time.time() + 180
        for line in proc.stdout:
            if line.startswith("step 1 "):
                break
            assert time.time() < deadline
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_session(proc)
    assert proc.returncode == EXIT_SIGNAL_CHECKPOINTED, out
    assert f"received {sig.name}" in out
    ckpt = latest_checkpoint(tmp_path)
    step = read_meta(ckpt)["step"]
    assert 1 <= step < 500
    assert max(losses(tmp_path)) == step  # saved at the end of the last completed step


def test_nan_loss_skips_the_step_and_training_continues(tiny_data, tmp_path):
    proc = train_here([*FAST, *data_overrides(tiny_data), "train.steps=5", f"run_dir={tmp_path}"],
                     env={"MEGAFIN_FAULT_NAN_STEPS": "3"})
    assert_ok(proc)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["skipped"] is True and records[2]["loss"] is None
    assert all(r["loss"] is not None and not r.get("skipped") for r in records if r["step"] != 3)
    assert "SKIPPED" in proc.stdout


def test_consecutive_nan_losses_stop_with_clear_message(tiny_data, tmp_path):
    proc = train_here([*FAST, *data_overrides(tiny_data), "train.steps=10", "train.max_bad_steps=3",
                      f"run_dir={tmp_path}"], env={"MEGAFIN_FAULT_NAN_STEPS": "2,3,4"})
    assert_ok(proc, EXIT_DIVERGED)
    assert "3 consecutive non-finite losses (last at step 4); stopping" in proc.stdout
    assert max(losses(tmp_path)) == 4


# ---------------------------------------------------------------- kills and signals at awkward moments
def _golden(recipe: str) -> dict[int, float]:
    return {int(k): v for k, v in json.loads(GOLDEN.read_text())[recipe].items()}


def _assert_golden(run_dir, recipe: str) -> None:
    """The run reached its end with the single-process reference losses of this recipe (tests/golden)."""
    want, got = _golden(recipe), losses(run_dir)
    assert sorted(got) == sorted(want) == list(range(1, STEPS[recipe] + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=GOLDEN_REL), f"step {step}: {got} vs {want}"


def test_sigkilled_trainer_leaves_no_process_behind_and_its_run_resumes(tiny_data, tmp_path):
    """kill -9 of the trainer alone (not its process group), right after a checkpoint: nothing it started may live
    on (megatron's checkpoint writer used to leave a spawned Manager and its resource tracker, 300 MB, for hours);
    the lock file it leaves is stale, and resume=auto takes the run to the end."""
    run = Watched(start_train([*recipe_overrides("cpt", tiny_data, tmp_path), "checkpoint.interval=2"]))
    try:
        run.wait_for("saved checkpoint", timeout=180)
        os.kill(run.proc.pid, signal.SIGKILL)
        assert run.finish(timeout=60) == -signal.SIGKILL
        left = wait_gone(lambda: in_session(run.proc.pid), timeout=10)
        assert not left, [" ".join(p.cmdline())[:200] for p in left]
    finally:
        kill_session(run.proc)
    assert read_meta(latest_checkpoint(tmp_path))["step"] < STEPS["cpt"], "the kill must land mid-run"
    assert json.loads((tmp_path / ".megafin.lock").read_text())["pid"] == run.proc.pid  # stale: its holder is dead
    assert_ok(train_here([*recipe_overrides("cpt", tiny_data, tmp_path), "train.resume=auto"]))
    _assert_golden(tmp_path, "cpt")


def test_sigterm_during_the_first_step_checkpoints_and_resumes(tiny_data, tmp_path):
    run = Watched(start_train(recipe_overrides("cpt", tiny_data, tmp_path)))
    try:
        run.wait_for("parameters on this rank", timeout=180)  # printed as the loop starts its first step
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout=120) == EXIT_SIGNAL_CHECKPOINTED, run.output()
    finally:
        kill_session(run.proc)
    out = run.output()
    assert out.index("received SIGTERM") < out.index("step 1 ") < out.index("exit 75")
    assert read_meta(latest_checkpoint(tmp_path))["step"] == 1
    assert_ok(train_here([*recipe_overrides("cpt", tiny_data, tmp_path), "train.resume=auto"]))
    _assert_golden(tmp_path, "cpt")


def test_signals_inside_the_dpo_reference_pass(tiny_data, tmp_path):
    """The reference pass is written chunk by chunk. SIGKILL after its first chunk leaves that chunk and no meta.json
    (the cache does not look complete); SIGTERM during the pass stops it before its next chunk (exit 75, no step
    taken, nothing to checkpoint); resume=auto continues the pass where it stopped, keeping the chunk already
    written, and reaches the end with the reference losses."""
    driver = [sys.executable, str(REPO / "tests/e2e/signal_in_reference_pass.py")]
    args = [str(REPO / "recipes/tiny/dpo.yaml"), *recipe_overrides("dpo", tiny_data, tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = tmp_path / "reference_logps"

    def drive(mode: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*driver, mode, *args, *extra], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300, start_new_session=True)

    killed = drive("kill-after-chunk")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    chunks = sorted(cache.glob("*.chunk*.npz"))
    assert len(chunks) == 1 and not (cache / "meta.json").exists()
    first = chunks[0].stat().st_mtime_ns

    stopped = drive("term-at-start")
    assert stopped.returncode == EXIT_SIGNAL_CHECKPOINTED, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "received SIGTERM" in stopped.stdout
    assert "stopped on SIGTERM during the DPO reference pass (1 of " in stopped.stdout
    assert "step 1 " not in stopped.stdout and latest_checkpoint(tmp_path) is None
    assert not (cache / "meta.json").exists() and chunks[0].stat().st_mtime_ns == first

    resumed = drive("plain", "train.resume=auto")
    assert_ok(resumed)
    assert "continuing the DPO reference pass" in resumed.stdout
    assert chunks[0].stat().st_mtime_ns == first and (cache / "meta.json").is_file()  # continued, not redone
    assert len(list(cache.glob("*.chunk*.npz"))) > 1
    _assert_golden(tmp_path, "dpo")
