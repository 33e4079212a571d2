"""train.init_from: the model is built without drawing any weight (every one is loaded next), and training from the
checkpoint gives the same losses as building with the initialization first."""
from __future__ import annotations

import pytest
import torch

from megafin.cli import main as megafin_main
from megafin.config import load_config
from tests.golden_recipes import SCHEDULE
from tests.helpers import FAST, TINY_RECIPE, data_overrides, losses


@pytest.fixture(scope="module")
def start(tiny_data, tmp_path_factory):
    """A checkpoint to start from: 2 steps of the tiny CPT recipe."""
    run = tmp_path_factory.mktemp("init_from_start")
    code = megafin_main(["train", str(TINY_RECIPE), *FAST, *data_overrides(tiny_data), *SCHEDULE, "train.steps=2",
                         "checkpoint.save_at_end=true", f"run_dir={run}"])
    assert code == 0
    return run / "checkpoints" / "step_0000002"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_from_init_from_matches_building_with_initialization(dtype, start, tiny_data, tmp_path, monkeypatch):
    """bf16 also checks the optimizer's fp32 main copies come from the loaded weights (they were copied from the
    build's random ones, and the first step threw the loaded weights away)."""
    import megafin.models.gpt as gpt

    def train(run_dir, force_init: bool) -> dict:
        if force_init:  # today's build: every weight drawn, then overwritten by the load
            real = gpt.build_model
            monkeypatch.setattr(gpt, "build_model", lambda *a, initialize=True, **k: real(*a, initialize=True, **k))
        # bf16 on quarter-length sequences and half the batch: CPUs without AVX512-BF16 or AMX multiply bf16
        # matrices ~100x slower than fp32 (this test took 50 s on a Zen 3 at full size, 27 s at half-length)
        short = ["data.seq_length=32", "parallel.global_batch_size=4"] if dtype == "bf16" else []
        code = megafin_main(["train", str(TINY_RECIPE), *FAST, *data_overrides(tiny_data), *SCHEDULE,
                             "train.steps=3", f"precision.dtype={dtype}", f"train.init_from={start}",
                             f"run_dir={run_dir}", *short])
        monkeypatch.undo()
        assert code == 0
        return losses(run_dir)

    skipped, drawn = train(tmp_path / "skipped", False), train(tmp_path / "drawn", True)
    assert skipped == drawn
    # and it starts where the checkpoint ended: not at a random model's loss (~ln vocab), and keeps going down
    assert skipped[1] < losses(start.parent.parent)[1] - 0.05
    assert skipped[3] < skipped[1]


# Last in the module: megatron_world holds process groups until the module ends, and the runs above start their own.
def test_no_weight_is_drawn_when_the_weights_will_be_loaded(megatron_world, monkeypatch):
    from megafin.models.gpt import build_model

    calls = []

    def counted(name: str, real):
        def init(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return init

    for name in ("normal_", "uniform_", "xavier_normal_", "xavier_uniform_", "kaiming_uniform_"):
        monkeypatch.setattr(torch.nn.init, name, counted(name, getattr(torch.nn.init, name)))
    cfg = load_config(None, [])
    build_model(cfg, 256, initialize=False)
    assert calls == []
    build_model(cfg, 256)  # from scratch: every weight matrix drawn (the sentinel sees them)
    assert calls.count("normal_") >= 2 + 4 * cfg.model.num_layers
