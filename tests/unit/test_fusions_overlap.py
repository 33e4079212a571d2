"""parallel.overlap_grad_reduce + overlap_param_gather with the distributed optimizer, 2 gloo processes (DP=2),
against one process: the same losses, and a checkpoint saved mid-run holds the step's weights (with the parameter
all-gather overlapped, half of them arrive only at the next forward unless the save gathers them first)."""
from __future__ import annotations

import pytest

from megafin.cli import main as megafin_main
from tests.golden_recipes import LAYOUT_REL, recipe_overrides
from tests.helpers import REPO, assert_close_to_scale, assert_ok, losses, run_train

OVERLAP = ["parallel.distributed_optimizer=true", "parallel.overlap_grad_reduce=true",
           "parallel.overlap_param_gather=true"]
SAVE_AT_3 = ["checkpoint.interval=3", "checkpoint.keep_last=5"]
RECIPE = REPO / "recipes/tiny/cpt.yaml"
STEP_3 = "checkpoints/step_0000003"
# Adam turns the layouts' ~1e-7 gradient rounding into weight differences by step 3: 6e-7 of the weights' scale
# (0.086) with SDPA's flash kernel, 2.7e-5 with cpu_causal_attention's. The latter is 6 of the embedding's 262,144
# entries, whose gradient nearly cancels (Adam divides by its root); every other tensor stays under 1.2e-7 of its
# scale, and both layouts are deterministic run to run. A weight that missed the step's all-gather is off by one
# whole update, lr ~3e-4: 3.5e-3 of the scale, 35x this bound.
WEIGHT_REL = 1e-4


def test_overlapped_dp2_matches_one_process_and_saves_the_steps_weights(tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert megafin_main(["train", str(RECIPE), *recipe_overrides("cpt", tiny_data, one), *SAVE_AT_3]) == 0
    assert_ok(run_train([*recipe_overrides("cpt", tiny_data, two), *SAVE_AT_3, *OVERLAP], nproc=2, recipe=RECIPE))
    want, got = losses(one), losses(two)
    assert sorted(got) == sorted(want) and len(got) >= 5
    for step in sorted(got):
        assert got[step] == pytest.approx(want[step], rel=LAYOUT_REL), f"step {step}: {got} vs {want}"
    assert abs(want[len(want)] - want[1]) > 0.05

    # the saved weights, loaded in this process
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed
    from megafin.runtime.model_session import load_model

    init_distributed(detect_launch_env(), tp=1, pp=1, seed=11)
    try:
        a = load_model(one / STEP_3)[0].state_dict()
        b = load_model(two / STEP_3)[0].state_dict()
    finally:
        shutdown_distributed()
    weights = [k for k, v in a.items() if hasattr(v, "dtype") and v.is_floating_point() and "_extra_state" not in k]
    assert len(weights) > 10
    for key in weights:
        assert_close_to_scale(b[key], a[key], rel=WEIGHT_REL, name=key)
