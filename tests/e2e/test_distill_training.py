"""Reward distillation through the CLI: `dpo.loss=distill` trains on packed pairs that carry a judge's rewards."""
from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, REPO


def test_distill_trains_on_the_judge_rewards(tiny_data, tmp_path):
    """`megafin train recipes/tiny/dpo.yaml dpo.loss=distill` on the sample pairs (most carry judge rewards). At step 1
    the policy is its reference: every implicit margin is 0, so pref_loss is the mean squared judge margin of the
    step's pairs, which would be exactly 1 had the rewards not reached the loss (1 / 0 for every pair)."""
    from megafin.cli import main as megafin_main

    assert json.loads((tiny_data / "preference_meta.json").read_text())["num_rewarded_examples"] > 0
    code = megafin_main(["train", str(REPO / "recipes/tiny/dpo.yaml"), *FAST, "train.steps=2", "dpo.loss=distill",
                         "scheduler.warmup_steps=0", f"data.tokenizer={tiny_data / 'tokenizer'}",
                         f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]", f"run_dir={tmp_path}"])
    assert code == 0
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    first = recs[0]
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx(first["pref_loss"], rel=1e-6)  # distill_alpha 0: no NLL term
    # The sample's squared judge margins lie in [0.0625, 1]; a mean of them that is not 1 means rewards were used.
    assert 0.0625 <= first["pref_loss"] < 0.99
    assert all(r["loss"] is not None and r["loss"] > 0 for r in recs)
    assert (tmp_path / "reference_logps").is_dir()  # a reference loss: the reference pass ran
