"""`megafin train` given a bad checkpoint: exit 2 with one line (from rank 0 only), no code from the checkpoint run;
train.resume=auto passes over an unreadable newest checkpoint, saying so, and resumes from the one before.
Each failure is covered function by function in tests/unit/test_checkpoint_safety.py; these run the CLI as a user does
(in this process, to spare a process start, except the 2-rank case)."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from tests.checkpoint_payloads import Touch, replace_object
from tests.helpers import FAST, REPO, assert_ok, data_overrides, run_train, train_here

SHORT = ["train.steps=4", "scheduler.warmup_steps=1", "checkpoint.interval=2", "checkpoint.keep_last=3"]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A tiny-recipe run dir with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("trained")
    assert_ok(train_here([*FAST, *data_overrides(tiny_data), *SHORT, f"run_dir={run_dir}"]))
    return run_dir


def _error_lines(proc) -> list[str]:
    assert f'File "{REPO / "megafin"}' not in proc.stdout + proc.stderr, proc.stderr[-3000:]  # no traceback
    return [line for line in proc.stderr.splitlines() if "checkpoint error" in line]


@pytest.mark.parametrize("how", ["train.resume", "train.init_from"])
def test_code_in_a_checkpoint_does_not_run_and_exits_2(how, trained, tiny_data, tmp_path):
    """train.resume=DIR with a crafted .metadata; train.init_from=DIR with a crafted object in a .distcp file."""
    ckpt = shutil.copytree(trained / "checkpoints" / "step_0000002", tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    if how == "train.resume":
        with open(ckpt / ".metadata", "wb") as f:
            pickle.dump(Touch(marker), f)
        named = str(ckpt / ".metadata")
    else:
        named = replace_object(ckpt, "decoder.layers.self_attention.linear_proj._extra_state", Touch(marker))
    proc = train_here([*FAST, *data_overrides(tiny_data), *SHORT, f"run_dir={tmp_path / 'run'}", f"{how}={ckpt}"])
    assert_ok(proc, 2)
    assert not marker.exists()
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1 and named in lines[0] and "refused" in lines[0], proc.stderr[-3000:]


def test_resume_auto_passes_over_a_truncated_newest_checkpoint(trained, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    newest = run_dir / "checkpoints" / "step_0000004"
    data = sorted(newest.glob("*.distcp"))[0]
    os.truncate(data, 100)
    proc = train_here([*FAST, *data_overrides(tiny_data), *SHORT, f"run_dir={run_dir}", "train.resume=auto"])
    assert_ok(proc)
    said = [line for line in proc.stdout.splitlines() if "passing over" in line]
    assert len(said) == 1 and str(data) in said[0] and "truncated" in said[0], proc.stdout[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000002'} at step 2" in proc.stdout
    assert data.stat().st_size > 100  # step 4 trained again and saved over the broken one


def test_changed_model_shape_under_two_ranks_is_one_line(trained, tiny_data, tmp_path):
    ckpt = trained / "checkpoints" / "step_0000002"
    proc = run_train([*FAST, *data_overrides(tiny_data), *SHORT, f"run_dir={tmp_path / 'run'}",
                      f"train.resume={ckpt}", "model.ffn_hidden_size=512"], nproc=2)
    # torchrun stops the job when a worker exits non-zero, exits 1 itself and reports the workers' exit codes
    assert proc.returncode != 0 and "exitcode: 2" in proc.stderr.replace("exitcode  :", "exitcode:"), proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]  # rank 0's; rank 1 failed alike, silently
    assert "decoder.layers.mlp.linear_fc1.weight" in lines[0] and "[4, 1408, 256]" in lines[0] \
        and "[4, 1024, 256]" in lines[0], lines[0]
