"""megafin/models/grouped_sdpa.py: with a mask on CUDA the key/value groups are expanded to every query head where
none of PyTorch's fused kernels takes GQA with a mask (it would fall back to the math kernel's fp32 score matrix); both
ways compute the same attention."""
from __future__ import annotations

import pytest
import torch

from megafin.models import grouped_sdpa as mod
from megafin.models.grouped_sdpa import expands_groups, grouped_sdpa


class _On:
    """A tensor's shape and a device type, as expands_groups reads them (no CUDA tensor needed)."""

    def __init__(self, device: str, heads: int):
        self.device, self._heads = torch.device(device), heads

    def size(self, dim: int) -> int:
        return self._heads


@pytest.mark.parametrize("device,grouped,masked,fused_takes_it,expands", [
    ("cuda", True, True, False, True),  # the math-kernel fallback this avoids
    ("cuda", True, True, True, False),  # a fused kernel takes GQA with the mask (torch 2.11 on H100/H200 did)
    ("cuda", True, False, False, False),  # flash takes GQA without a mask
    ("cuda", False, True, False, False),  # nothing to expand
    ("cpu", True, True, False, False),  # the CPU's fused kernel takes both
])
def test_when_groups_are_expanded(monkeypatch, device, grouped, masked, fused_takes_it, expands):
    asked = []
    monkeypatch.setattr(mod, "fused_kernel_takes_grouped", lambda *a: asked.append(a) or fused_takes_it)
    q, k = _On(device, 8), _On(device, 2 if grouped else 8)
    assert expands_groups(q, k, k, object() if masked else None) is expands
    assert bool(asked) == (device == "cuda" and grouped and masked)  # PyTorch is asked only where it matters


def test_this_pytorch_answers_the_question_on_cpu_tensors():
    """The dispatch checks exist in the installed PyTorch and take enable_gqa (False on CPU tensors: CUDA kernels)."""
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    assert mod.fused_kernel_takes_grouped(q, k, k, torch.ones(8, 8, dtype=torch.bool), 0.0, False) is False
    cuda = torch.backends.cuda
    assert cuda.can_use_efficient_attention(cuda.SDPAParams(q, k, k, None, 0.0, False, True), False) is False


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
