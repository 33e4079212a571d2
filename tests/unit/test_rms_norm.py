"""megafin/models/rms_norm.py: torch.nn.RMSNorm's forward to the bit (fp32, bf16 with an fp32 or a bf16 weight), its
gradients to fp32 rounding, and what the local layer spec builds for both of a layer's norms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megafin.models.rms_norm import RMSNorm
from tests.helpers import assert_close_to_scale


class _Config:
    normalization = "RMSNorm"
    layernorm_zero_centered_gamma = persist_layer_norm = sequence_parallel = memory_efficient_layer_norm = False


CASES = [(torch.float32, torch.float32, 1e-6), (torch.bfloat16, torch.float32, 1e-2), (torch.bfloat16, torch.bfloat16,
                                                                                      1e-2)]


@pytest.mark.parametrize("dtype,weight_dtype,rel", CASES, ids=["fp32", "bf16-fp32-weight", "bf16"])
def test_forward_is_torch_rms_norm_and_gradients_match_autograd(dtype, weight_dtype, rel):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(33, 3, 96, generator=g) * 3).to(dtype)
    grad = torch.randn(33, 3, 96, generator=g).to(dtype)
    weight = (torch.rand(96, generator=g) + 0.5).to(weight_dtype)
    norm = RMSNorm(_Config(), 96, eps=1e-5)
    norm.weight.data = weight.clone()
    torch_norm = torch.nn.RMSNorm(96, eps=1e-5)
    torch_norm.weight.data = weight.clone()
    outs = []
    for module in (norm, torch_norm):
        x = x0.clone().requires_grad_()
        y = module(x)
        y.backward(grad)
        outs.append((y.detach(), x.grad, module.weight.grad))
    (y, dx, dw), (want_y, want_dx, want_dw) = outs
    assert y.dtype == want_y.dtype and torch.equal(y, want_y)
    assert torch.equal(y, F.rms_norm(x0, [96], weight, 1e-5))  # what lean decoding computes
    assert dx.dtype == want_dx.dtype and dw.dtype == want_dw.dtype
    assert_close_to_scale(dx.float(), want_dx.float(), rel, "dx")
    assert_close_to_scale(dw.float(), want_dw.float(), rel, "dw")


def test_the_local_spec_builds_it_for_both_norms_of_a_layer(megatron_world):
    from megafin.config import load_config
    from megafin.models.gpt import build_model
    from tests.helpers import TINY_MODEL

    model = build_model(load_config(None, [*TINY_MODEL, "model.attention_backend=sdpa"]), vocab_size=64)
    for layer in model.decoder.layers:
        assert type(layer.input_layernorm) is RMSNorm and type(layer.pre_mlp_layernorm) is RMSNorm
    assert type(model.decoder.final_layernorm) is torch.nn.RMSNorm  # GPTModel builds it: torch's
    assert "decoder.layers.0.input_layernorm.weight" in model.state_dict()
