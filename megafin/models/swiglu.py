"""SwiGLU as the MLP's activation module (MLPSubmodules.activation_func): silu(a) * b of fc1's [..., 2f] output,
with a hand-written backward that writes both halves' gradients into one [..., 2f] tensor.

megatron-core's unfused path (config.gated_linear_unit, no bias_activation_fusion, which needs torch.compile)
chunks fc1's output, adds glu_linear_offset (0.0) to the linear half, and its backward concatenates the two
halves' gradients: one full pass each that this avoids. The products are the same, in the same order:
bit-identical outputs and gradients (tests/unit/test_swiglu.py).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        sa = F.silu(a)
        ctx.save_for_backward(a, b, sa)
        return sa * b

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        a, b, sa = ctx.saved_tensors
        f = a.size(-1)
        out = torch.empty(*grad.shape[:-1], 2 * f, dtype=grad.dtype, device=grad.device)
        torch.ops.aten.silu_backward.grad_input(grad * b, a, grad_input=out[..., :f])
        torch.mul(grad, sa, out=out[..., f:])
        return out


class SwiGLU(torch.nn.Module):
    """Built by MLP from the layer spec when config.use_te_activation_func is set (megatron-core's seam for an
    activation module; the name is TE's, nothing here needs TE)."""

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        if config is not None:
            assert config.gated_linear_unit and config.activation_func is F.silu, "SwiGLU needs a gated SiLU MLP"
            assert config.glu_linear_offset == 0.0 and config.activation_func_clamp_value is None, \
                "SwiGLU: no glu_linear_offset or clamp"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwiGLU.apply(x)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Any = None) -> dict:
        return {}  # no parameters or buffers; MLP.sharded_state_dict asks every child
