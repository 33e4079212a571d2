"""SIGTERM/SIGUSR1 save at the end of the step and exit 75; non-finite losses skip steps, then stop the run."""
from __future__ import annotations

import json
import signal
import time

import pytest

from megafin.checkpoint.manager import latest_checkpoint, read_meta
from megafin.checkpoint.signals import EXIT_DIVERGED, EXIT_SIGNAL_CHECKPOINTED
from tests.helpers import FAST, assert_ok, data_overrides, kill_session, losses, run_train, start_train


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
    proc = run_train([*FAST, *data_overrides(tiny_data), "train.steps=5", f"run_dir={tmp_path}"],
                     env={"MEGAFIN_FAULT_NAN_STEPS": "3"})
    assert_ok(proc)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["skipped"] is True and records[2]["loss"] is None
    assert all(r["loss"] is not None and not r.get("skipped") for r in records if r["step"] != 3)
    assert "SKIPPED" in proc.stdout


def test_consecutive_nan_losses_stop_with_clear_message(tiny_data, tmp_path):
    proc = run_train([*FAST, *data_overrides(tiny_data), "train.steps=10", "train.max_bad_steps=3",
                      f"run_dir={tmp_path}"], env={"MEGAFIN_FAULT_NAN_STEPS": "2,3,4"})
    assert_ok(proc, EXIT_DIVERGED)
    assert "3 consecutive non-finite losses (last at step 4); stopping" in proc.stdout
    assert max(losses(tmp_path)) == 4
