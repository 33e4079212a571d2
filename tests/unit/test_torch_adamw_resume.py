"""optimizer.torch_adamw across a resume: torch's load_state_dict takes the saved param groups, `fused` and
`foreach` included, so the Trainer sets the configured kernel after the resume; neither kernel leaks from a
checkpoint into a run configured otherwise. (Its own module: the saving run starts and ends its own process
groups, which a module-scoped megatron_world would conflict with.)"""
from __future__ import annotations

import pytest

from tests.helpers import FAST, TINY_RECIPE, assert_ok, data_overrides, train_here


@pytest.mark.parametrize("saved,resumed,groups",
                         [("fused", "default", (None, None)), ("default", "fused", (True, False))])
def test_the_configured_kernel_wins_over_the_checkpoints(saved, resumed, groups, tiny_data, tmp_path):
    from megafin.config import load_config, validate
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed
    from megafin.train.loop import Trainer

    common = [*FAST, *data_overrides(tiny_data), f"run_dir={tmp_path}", "scheduler.warmup_steps=0"]
    assert_ok(train_here([*common, "train.steps=1", "checkpoint.save_at_end=true", f"optimizer.torch_adamw={saved}"]))
    cfg = load_config(TINY_RECIPE, [*common, "train.steps=2", "train.resume=auto", f"optimizer.torch_adamw={resumed}"])
    validate(cfg, 1)
    init_distributed(detect_launch_env(), tp=1, pp=1, seed=cfg.train.seed)
    try:
        trainer = Trainer(cfg, detect_launch_env())
        assert trainer.progress.step == 1  # resumed from the saved run's checkpoint
        opts = getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer])
        assert {(g["fused"], g["foreach"]) for o in opts for g in o.optimizer.param_groups} == {groups}
    finally:
        shutdown_distributed()
