"""RMSNorm for the local layer spec on CPU: torch's RMSNorm forward, op for op, with a hand-written backward (on
other devices torch's RMSNorm itself).

megatron-core's local spec builds torch.nn.RMSNorm (WrappedTorchNorm). On CPU its forward is a chain of ops
(upcast, pow, mean, rsqrt, two products) and autograd runs each one's backward: ~10 ms per norm at 4096 tokens x
512 hidden on 2 cores. Here the backward is the closed form, dx = rstd (g w - x^ mean(g w x^)) and
dw = sum(g x^), in ~5 ms. The forward runs the same ops in the same order as torch.rms_norm, so outputs are
bit-identical (lean decoding, megafin/generate/lean_decode.py, calls F.rms_norm on these modules' weights and
relies on it); gradients equal autograd's to fp32 rounding (tests/unit/test_rms_norm.py).

What it keeps for the backward: the fp32 normalized input and the fp32 rstd (4 h + 4 bytes per token), where
torch's chain kept its fp32 input as well.
"""
from __future__ import annotations

from typing import Any

import torch


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()  # no copy in fp32
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # torch.rms_norm's ops, in its order
        normed = xf * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return (normed * weight).type_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        normed, rstd, weight = ctx.saved_tensors
        g = grad.float()
        gw = g * weight
        # mean over the hidden axis of gw * normed, negated, so one addcmul gives gw - normed * mean
        mean = torch.linalg.vecdot(gw, normed, dim=-1).unsqueeze(-1).div_(-normed.size(-1))
        dx = torch.addcmul(gw, normed, mean).mul_(rstd)
        dw = (g * normed).sum(dim=tuple(range(g.dim() - 1)))
        return dx.to(grad.dtype), dw.to(weight.dtype), None


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm (the same parameter, state dict and isinstance) built from a layer spec as megatron-core's
    WrappedTorchNorm is: (config, hidden_size, eps)."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **unused: Any) -> None:
        assert config.normalization == "RMSNorm", f"megafin's RMSNorm, not {config.normalization}"
        assert not (config.layernorm_zero_centered_gamma or config.persist_layer_norm or config.sequence_parallel
                    or config.memory_efficient_layer_norm), "RMSNorm: as WrappedTorchNorm, none of these"
        super().__init__(normalized_shape=hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # CUDA's torch.rms_norm is one fused kernel: faster, and what lean decoding runs
            return super().forward(x)
        return _RMSNorm.apply(x, self.weight, self.eps)
