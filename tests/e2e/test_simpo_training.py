"""SimPO through the CLI: a reference-free loss trains without a reference model or a reference pass."""
from __future__ import annotations

from tests.helpers import FAST, REPO, losses


def test_simpo_trains_without_a_reference_pass(tiny_data, tmp_path):
    """`megafin train recipes/tiny/dpo.yaml dpo.loss=simpo`: trains, and computes and stores no reference log-probs."""
    from megafin.cli import main as megafin_main

    code = megafin_main(["train", str(REPO / "recipes/tiny/dpo.yaml"), *FAST, "train.steps=2", "dpo.loss=simpo",
                         "dpo.beta=2.0", "scheduler.warmup_steps=0", f"data.tokenizer={tiny_data / 'tokenizer'}",
                         f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]", f"run_dir={tmp_path}"])
    assert code == 0
    assert all(loss is not None and loss > 0 for loss in losses(tmp_path).values())
    assert not (tmp_path / "reference_logps").exists()
