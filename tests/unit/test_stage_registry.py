"""The stage seam: stages are found by name in megafin/stages, the code around them names none, and a stage
registered from outside trains through the CLI like a built-in one."""
from __future__ import annotations

import json
import re

import pytest

from tests.helpers import FAST, REPO

# What asks the registry instead of knowing stages: none of these may spell a stage's name.
STAGE_AGNOSTIC = ["megafin/train/loop.py", "megafin/config/validate.py", "megafin/data/build.py",
                  "megafin/metrics/metrics.py", "megafin/cli.py"]


def test_the_code_around_stages_names_none():
    from megafin.stages import stage_names

    for path in STAGE_AGNOSTIC:
        text = (REPO / path).read_text()
        for name in stage_names():
            assert not re.search(rf"""["']{name}["']""", text), f"{path} names stage {name!r}: ask the registry"


def test_every_packed_kind_a_stage_trains_on_is_one_data_prep_writes():
    from data_prep.kinds import KINDS
    from megafin.stages import stage_class, stage_names

    for name in stage_names():
        kind = stage_class(name).packed_kind
        assert kind is None or kind in KINDS, f"stage {name}: packed_kind {kind!r} is not a data_prep kind"


@pytest.fixture
def toy_stage():
    """A stage registered by a test, as a user's own module would: SFT's loss, also reported as a metric of its own."""
    from megafin import stages
    from megafin.stages.base import Metric
    from megafin.stages.language_model import LanguageModelStage

    @stages.register_stage("toy_sft")
    class ToySFT(LanguageModelStage):
        packed_kind = "sft"
        metrics = (Metric("loss_copy", show="{:.4f}"),)

        def loss(self, batch, output_tensor):
            import torch

            loss_sum, count, report = super().loss(batch, output_tensor)
            return loss_sum, count, {"report": torch.cat([report["report"], loss_sum.detach().reshape(1)])}

    yield "toy_sft"
    del stages._REGISTRY["toy_sft"]


def test_a_registered_stage_validates_and_trains(toy_stage, tiny_data, tmp_path, capsys):
    from megafin.cli import main as megafin_main

    common = [*FAST, "train.steps=2", "scheduler.warmup_steps=0", f"data.tokenizer={tiny_data / 'tokenizer'}",
              f"run_dir={tmp_path}"]
    # Its data kind is checked like a built-in's: pretraining corpora are refused for it.
    bad = megafin_main(["train", str(REPO / "recipes/tiny/sft.yaml"), *common, f"stage={toy_stage}",
                        f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]"])
    assert bad == 2
    assert "packed data of kind 'sft' for stage toy_sft" in capsys.readouterr().err
    code = megafin_main(["train", str(REPO / "recipes/tiny/sft.yaml"), *common, f"stage={toy_stage}",
                         f"data.blend=[{{path: {tiny_data / 'sft'}, weight: 1}}]"])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_copy"] for r in records] == [r["loss"] for r in records]  # reduced as the loss is
    assert all(r["loss"] > 0 and r["target_tokens"] > 0 for r in records)
    assert "| loss_copy " in capsys.readouterr().out  # printed as it declared
