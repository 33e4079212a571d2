"""TP=2, PP=2 and DP=2 (2 gloo processes each) train the tiny recipe to the single-process losses."""
from __future__ import annotations

import pytest

from tests.helpers import FAST, assert_ok, data_overrides, losses, run_train

STEPS = 6
# Same schedule in every run (decay_steps fixed), so runs of different lengths see the same learning rates.
SCHEDULE = ["scheduler.decay_steps=20", "scheduler.warmup_steps=3"]


@pytest.fixture(scope="module")
def single_losses(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    assert_ok(run_train([*FAST, *data_overrides(tiny_data), *SCHEDULE, f"train.steps={STEPS}",
                         f"run_dir={run_dir}"]))
    return losses(run_dir)


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], []], ids=["tp2", "pp2", "dp2"])
def test_two_process_layout_matches_single_process(layout, single_losses, tiny_data, tmp_path):
    proc = run_train([*FAST, *data_overrides(tiny_data), *SCHEDULE, f"train.steps={STEPS}", f"run_dir={tmp_path}",
                      *layout], nproc=2)
    assert_ok(proc)
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(single_losses[step], abs=1e-5), f"step {step}: {got} vs {single_losses}"
    # The loss must actually move, or matching would prove nothing.
    assert single_losses[STEPS] < single_losses[1] - 0.3
