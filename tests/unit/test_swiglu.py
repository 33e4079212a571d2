"""megafin's SwiGLU activation module (megafin/models/swiglu.py) against megatron-core's unfused gated SiLU:
bit-identical outputs and gradients, alone and inside the model's MLP."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megafin.config import load_config
from tests.helpers import TINY_MODEL


def _megatron_glu(x):  # megatron-core's MLP.forward, gated_linear_unit without bias_activation_fusion
    x_glu, x_linear = torch.chunk(x, 2, dim=-1)
    return F.silu(x_glu) * (x_linear + 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_bit_identical_to_megatron(dtype):
    from megafin.models.swiglu import SwiGLU

    torch.manual_seed(0)
    x = torch.randn(7, 3, 2 * 24, dtype=dtype)
    grad = torch.randn(7, 3, 24, dtype=dtype)
    ref_in, ours_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, ours = _megatron_glu(ref_in), SwiGLU()(ours_in)
    ref.backward(grad)
    ours.backward(grad)
    assert torch.equal(ours, ref)
    assert torch.equal(ours_in.grad, ref_in.grad)


def test_model_mlp_uses_it_and_matches_megatron(megatron_world):
    from megafin.models.gpt import build_model
    from megafin.models.swiglu import SwiGLU

    cfg = load_config(None, [*TINY_MODEL, "model.attention_backend=sdpa", "train.seed=3"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=100)
    tokens, labels = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    positions = torch.arange(16).expand(2, 16)

    def run():
        model.zero_grad(set_to_none=True)
        loss = model(tokens, positions, None, labels=labels)
        loss.sum().backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    mlps = [layer.mlp for layer in model.decoder.layers]
    assert all(isinstance(mlp.activation_func, SwiGLU) for mlp in mlps)
    loss_ours, grads_ours = run()
    model.config.use_te_activation_func = False  # megatron's own glu (the config is shared by every module)
    try:
        loss_ref, grads_ref = run()
    finally:
        model.config.use_te_activation_func = True
    assert torch.equal(loss_ours, loss_ref)
    for name, g in grads_ref.items():
        assert torch.equal(grads_ours[name], g), name
