"""megafin's RoPE path (megafin/models/rope.py) against megatron-core's unfused RoPE: bit-identical outputs and
gradients, for the rotation alone and for the whole model (plain, packed THD, per-token positions, bf16)."""
from __future__ import annotations

import pytest
import torch

from megafin.config import load_config
from tests.helpers import TINY_MODEL


def _megatron_rope(t, freqs, cu_seqlens=None):
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4)
    return apply_rotary_pos_emb(t, freqs, config=config, cu_seqlens=cu_seqlens,
                                cp_group=parallel_state.get_context_parallel_group())


def _freqs(length, dim=16):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0, rotary_base=10000, use_cpu_initialization=True)
    return rope.get_freqs_non_repeated(length).repeat(1, 2)[:, None, None, :]  # what get_emb builds, on the CPU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_bit_identical_to_megatron(dtype, megatron_world):
    from megafin.models.rope import _Rotate, _tables

    torch.manual_seed(0)
    freqs = _freqs(12)
    x = torch.randn(12, 3, 4, 16, dtype=dtype)
    grad = torch.randn(12, 3, 4, 16, dtype=dtype)
    ref_in, ours_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = _megatron_rope(ref_in, freqs)
    cos, sin = _tables(freqs).cast(dtype)
    ours = _Rotate.apply(ours_in, cos, sin)
    ref.backward(grad)
    ours.backward(grad)
    assert torch.equal(ours, ref)
    assert torch.equal(ours_in.grad, ref_in.grad)


def _model(extra=()):
    from megafin.models.gpt import build_model

    cfg = load_config(None, [*TINY_MODEL, "model.attention_backend=sdpa", "train.seed=3", *extra])
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=100)


def _loss_and_grads(model, megatron_path: bool, tokens, positions, labels, params=None):
    from megatron.core.transformer.attention import SelfAttention

    from megafin.models import rope

    for layer in model.decoder.layers:
        assert type(layer.self_attention) is rope.CachedRopeSelfAttention  # the spec plugs it in
        if megatron_path:
            layer.self_attention.__class__ = SelfAttention
    rotations = []
    apply = rope._Rotate.apply
    rope._Rotate.apply = lambda *a: rotations.append(1) or apply(*a)
    try:
        model.zero_grad(set_to_none=True)
        loss = model(tokens, positions, None, labels=labels, packed_seq_params=params)
        loss.float().sum().backward()
    finally:
        rope._Rotate.apply = apply
        for layer in model.decoder.layers:
            layer.self_attention.__class__ = rope.CachedRopeSelfAttention
    # megafin's path rotates q and k in every layer; megatron's path none of it (both otherwise the same model)
    assert len(rotations) == (0 if megatron_path else 2 * len(model.decoder.layers))
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(model, *batch):
    loss_ours, grads_ours = _loss_and_grads(model, False, *batch)
    loss_ref, grads_ref = _loss_and_grads(model, True, *batch)
    assert torch.equal(loss_ours, loss_ref)
    for name, g in grads_ref.items():
        assert torch.equal(grads_ours[name], g), name


def test_model_plain_batch_bit_identical(megatron_world):
    model = _model()
    tokens = torch.randint(0, 100, (2, 24))
    positions = torch.arange(24).expand(2, 24)
    _assert_same(model, tokens, positions, torch.randint(0, 100, (2, 24)))


@pytest.mark.parametrize("per_token", [False, True], ids=["per-document", "per-token"])
def test_model_packed_batch_bit_identical(per_token, megatron_world):
    from megatron.core.packed_seq_params import PackedSeqParams

    model = _model()
    lens = [5, 16, 3]
    total = sum(lens)
    cu = torch.tensor([0, 5, 21, 24], dtype=torch.int32)
    # max_seqlen == the packed length: megatron reads the table token by token (LogprobGPTModel's per-token RoPE)
    longest = total if per_token else max(lens)
    tokens = torch.randint(0, 100, (1, total))
    positions = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)

    def params():  # fresh per forward, as the stages build them (caches live on the object)
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                               max_seqlen_kv=longest)

    labels = torch.randint(0, 100, (1, total))
    loss_ours, grads_ours = _loss_and_grads(model, False, tokens, positions, labels, params())
    loss_ref, grads_ref = _loss_and_grads(model, True, tokens, positions, labels, params())
    assert torch.equal(loss_ours, loss_ref)
    for name, g in grads_ref.items():
        assert torch.equal(grads_ours[name], g), name


def test_model_bf16_bit_identical(megatron_world):
    model = _model(["precision.dtype=bf16"])
    tokens = torch.randint(0, 100, (2, 16))
    _assert_same(model, tokens, torch.arange(16).expand(2, 16), torch.randint(0, 100, (2, 16)))
