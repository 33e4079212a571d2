"""megafin/models/grouped_sdpa.py: with a mask on CUDA the key/value groups are expanded to every query head (SDPA's
GQA with a mask would fall back to the math kernel's fp32 score matrix); both ways compute the same attention."""
from __future__ import annotations

import pytest
import torch

from megafin.models.grouped_sdpa import expands_groups, grouped_sdpa


@pytest.mark.parametrize("device,grouped,masked,expands", [
    ("cuda", True, True, True),  # the math-kernel fallback this avoids
    ("cuda", True, False, False),  # flash takes GQA without a mask
    ("cuda", False, True, False),  # nothing to expand
    ("cpu", True, True, False),  # the CPU's fused kernel takes both
])
def test_when_groups_are_expanded(device, grouped, masked, expands):
    assert expands_groups(device, grouped, masked) is expands


@pytest.mark.parametrize("masked", [True, False])
def test_expanded_groups_are_the_same_attention(masked):
    g = torch.Generator().manual_seed(0)
    b, h, groups, sq, sk, d = 2, 8, 2, 5, 9, 16
    q = torch.randn(b, h, sq, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, groups, sk, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, groups, sk, d, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(b, 1, sq, sk, generator=g) < 0.7) if masked else None
    if mask is not None:
        mask[..., 0] = True  # every query sees a key
    grad = torch.randn(b, h, sq, d, generator=g, dtype=torch.float64)
    outs = []
    for expand in (False, True):
        out = grouped_sdpa(q, k, v, attn_mask=mask, scale=0.3, expand=expand)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        outs.append((out, dq, dk, dv))
    for a, e in zip(*outs):
        torch.testing.assert_close(e, a, rtol=1e-12, atol=1e-12)
