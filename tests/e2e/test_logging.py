"""Metrics reach every sink: metrics.jsonl (the record), wandb offline without an API key, tensorboard."""
from __future__ import annotations

import json

from tests.helpers import FAST, assert_ok, data_overrides, run_train


def test_metrics_jsonl_wandb_offline_and_tensorboard(tiny_data, tmp_path):
    proc = run_train([*FAST, *data_overrides(tiny_data), "train.steps=3", "scheduler.warmup_steps=1", "logging.wandb=true",
                      "logging.tensorboard=true", f"run_dir={tmp_path}"], env={"WANDB_API_KEY": "", "WANDB_MODE": ""})
    assert_ok(proc)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "consumed_samples"):
        assert all(isinstance(r[key], (int, float)) for r in records), key
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert offline, sorted(p.name for p in (tmp_path / "wandb").iterdir())
    assert list(offline[0].glob("*.wandb"))  # the local run file `wandb sync` uploads later
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
