"""A packed (THD) batch through the whole model equals running each document alone: for the SDPA backend and the
Triton backend (under TRITON_INTERPRET=1 on CPU). Loss and every parameter gradient."""
from __future__ import annotations

import pytest
import torch

from megafin.config import load_config
from tests.helpers import TINY_MODEL, assert_close_to_scale

# Gradients agree to fp32 rounding of the tensor's scale (<= 3e-7 of max|grad| measured under AVX-512, AVX2 and
# scalar kernels); 1e-5 leaves 30x, and attention leaking across documents moves them by O(max|grad|).
GRAD_REL = 1e-5


def _model(backend: str):
    from megafin.models.gpt import build_model

    cfg = load_config(None, [*TINY_MODEL, f"model.attention_backend={backend}", "train.seed=3"])
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=100)


def _packed_loss(model, tokens, labels, lens):
    from megatron.core.packed_seq_params import PackedSeqParams

    device = next(model.parameters()).device  # CUDA on a GPU machine
    tokens, labels = tokens.to(device), labels.to(device)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    positions = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0).to(device)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lens),
                             max_seqlen_kv=max(lens))
    return model(tokens.unsqueeze(0), positions, None, labels=labels.unsqueeze(0), packed_seq_params=params)[0]


def _alone_loss(model, tokens, labels, lens):
    device = next(model.parameters()).device
    out, start = [], 0
    for n in lens:
        t, l = tokens[start:start + n].to(device), labels[start:start + n].to(device)
        out.append(model(t.unsqueeze(0), torch.arange(n, device=device).unsqueeze(0), None, labels=l.unsqueeze(0))[0])
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_packed_batch_equals_documents_alone(backend, megatron_world):
    if backend == "triton":
        pytest.importorskip("triton")
    lens = [1, 16, 11, 4]  # length 1, exactly one kernel block, longer than a block
    tokens = torch.randint(0, 100, (sum(lens),))
    labels = torch.randint(0, 100, (sum(lens),))
    model = _model(backend)
    packed = _packed_loss(model, tokens, labels, lens)
    packed.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    alone = _alone_loss(model, tokens, labels, lens)
    alone.sum().backward()
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        assert_close_to_scale(grads[name], p.grad, GRAD_REL, name)
    # Not vacuous: packing without document boundaries (one causal sequence) changes later documents' losses.
    joined = _alone_loss(model, tokens, labels, [sum(lens)])
    assert not torch.allclose(joined[lens[0]:], alone[lens[0]:], atol=1e-3)


def test_sdpa_and_triton_backends_agree(megatron_world):
    pytest.importorskip("triton")
    lens = [7, 20, 5]
    tokens = torch.randint(0, 100, (sum(lens),))
    a = _packed_loss(_model("sdpa"), tokens, tokens, lens)
    b = _packed_loss(_model("triton"), tokens, tokens, lens)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_thd_plan_groups_similar_lengths_and_unpads_in_pack_order():
    """SDPA's THD path pads documents of similar length into one call; every token comes back to its place."""
    from megafin.models.sdpa_attention import _THDPlan

    lens = [1, 16, 11, 4, 0, 15]
    cu = [0, *torch.tensor(lens).cumsum(0).tolist()]
    plan = _THDPlan(cu, torch.device("cpu"))
    total = sum(lens)
    padded = torch.cat([g.q_rows for g in plan.groups])
    assert torch.equal(padded[plan.unpad], torch.arange(total))  # unpadding restores pack order
    for g in plan.groups:
        assert g.mask is None and torch.equal(g.q_rows, g.kv_rows)  # plain causal documents
        assert g.q_rows.numel() == g.n * g.lq
        length_at = {s: n for s, n in zip(cu[:-1], lens) if n}  # document start -> its length
        real = [length_at[s] for s in g.q_rows.view(g.n, g.lq)[:, 0].tolist()]
        assert all(r <= g.lq for r in real)
        assert g.n * g.lq * g.lq <= _THDPlan.MAX_WASTE * sum(r * r for r in real)
    assert len(plan.groups) < len([n for n in lens if n])  # fewer calls than documents
