"""assert_close_to_scale (tests/helpers.py) passes fp32 rounding of a tensor's scale and fails a real change."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close_to_scale


def test_rounding_of_the_scale_passes_even_on_entries_near_zero():
    ref = torch.tensor([13.0, -4.0, 1e-7, 0.0])
    got = ref + torch.tensor([2e-6, -1e-6, 1e-6, -1e-6])  # ~1e-7 of max|ref| everywhere, 10x the tiny entry
    assert_close_to_scale(got, ref, 1e-6, "grad")


@pytest.mark.parametrize("bad", [torch.tensor([13.013, -4.0, 0.0]), torch.tensor([13.0, -4.0, float("nan")])],
                         ids=["1e-3 change", "nan"])
def test_a_real_change_or_nan_fails(bad):
    with pytest.raises(AssertionError, match="grad: max"):
        assert_close_to_scale(bad, torch.tensor([13.0, -4.0, 0.0]), 1e-5, "grad")


def test_shapes_must_match():
    with pytest.raises(AssertionError, match="shape"):
        assert_close_to_scale(torch.zeros(3), torch.zeros(1, 3), 1e-5, "grad")
