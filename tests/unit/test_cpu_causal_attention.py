"""megafin/models/cpu_causal_attention.py: the blocked causal attention gives SDPA's outputs and gradients (GQA, lengths
that are no multiple of the block, a given scale), keeps its softmax only when gradients are wanted, is chosen
exactly where `takes` says, and is what a megafin model runs for a causal fp32 batch on CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megafin.models import cpu_causal_attention as mod
from megafin.models.cpu_causal_attention import cpu_causal_attention, takes
from tests.helpers import assert_close_to_scale

REL = 1e-5  # both sum fp32 products of the same scores in another order: measured <= 8e-7


def _qkv(s: int, b: int, heads: int, groups: int, d: int, seed: int = 0) -> torch.Tensor:
    """The fused QKV output megatron-core splits: [s, b, groups, (heads per group + 2) d]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, b, groups, (heads // groups + 2) * d, generator=g).requires_grad_()


def _split(qkv: torch.Tensor, heads: int, groups: int, d: int):
    s, b = qkv.shape[:2]
    q, k, v = torch.split(qkv, [heads // groups * d, d, d], dim=-1)
    return q.reshape(s, b, heads, d), k, v


def _sdpa(q, k, v, scale=None):
    o = F.scaled_dot_product_attention(*(x.permute(1, 2, 0, 3) for x in (q, k, v)), is_causal=True, scale=scale,
                                       enable_gqa=True)
    return o.permute(2, 0, 1, 3).reshape(o.size(2), o.size(0), -1)


@pytest.mark.parametrize("s,b,heads,groups,d,scale", [
    (128, 2, 8, 4, 32, None),  # two full blocks, 2 query heads per group
    (100, 3, 4, 4, 16, None),  # a partial last block, no GQA
    (65, 1, 6, 2, 8, 0.3),  # one position past a block, 3 heads per group, another scale
    (7, 2, 2, 1, 8, None),  # shorter than a block
])
def test_outputs_and_gradients_equal_sdpa(s, b, heads, groups, d, scale):
    grad_out = torch.randn(s, b, heads * d, generator=torch.Generator().manual_seed(1))
    results = []
    for attend in (_sdpa, cpu_causal_attention):
        qkv = _qkv(s, b, heads, groups, d)
        out = attend(*_split(qkv, heads, groups, d), scale)
        out.backward(grad_out)
        results.append((out.detach(), qkv.grad))
    (want, want_grad), (got, got_grad) = results
    assert_close_to_scale(got, want, REL, "output")
    assert_close_to_scale(got_grad, want_grad, REL, "d qkv")


def test_the_softmax_is_kept_only_for_a_backward():
    def saved_bytes(grad: bool) -> int:
        kept = []
        qkv = _qkv(128, 2, 4, 2, 16)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.nbytes) or t, lambda t: t):
            with torch.set_grad_enabled(grad):
                cpu_causal_attention(*_split(qkv, 4, 2, 16))
        return sum(kept)

    assert saved_bytes(False) == 0
    # queries (scaled), keys, values, output, and the two blocks' softmax: [2 batch, 4 heads, 64 rows, 64 | 128 keys]
    per_token = 4 * 16 + 2 * 2 * 16 + 4 * 16
    assert saved_bytes(True) == 4 * (128 * 2 * per_token + 2 * 4 * 64 * (64 + 128))


def _tensor(s: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(s, 1, 2, 8, dtype=dtype)


@pytest.mark.parametrize("query,key,mask,dropout,want", [
    (_tensor(64), _tensor(64), None, 0.0, True),
    (_tensor(mod.MAX_SEQ), _tensor(mod.MAX_SEQ), None, 0.0, True),
    (_tensor(mod.MAX_SEQ + 1), _tensor(mod.MAX_SEQ + 1), None, 0.0, False),  # the kept scores grow with s^2
    (_tensor(64, torch.bfloat16), _tensor(64, torch.bfloat16), None, 0.0, False),  # softmax and GEMMs in fp32 only
    (_tensor(64), _tensor(64), torch.zeros(1, 1, 64, 64, dtype=torch.bool), 0.0, False),  # an explicit mask
    (_tensor(64), _tensor(64), None, 0.1, False),  # dropout
    (_tensor(1), _tensor(64), None, 0.0, False),  # KV-cache decoding: fewer queries than keys
])
def test_which_calls_it_takes(query, key, mask, dropout, want):
    assert takes(query, key, mask, dropout) is want


@pytest.mark.parametrize("dtype,kernel", [("fp32", "_CausalAttentionBackward"), ("bf16", None)])
def test_a_megafin_model_runs_it_for_causal_fp32_batches_on_cpu(dtype, kernel, megatron_world):
    from megafin.config import load_config
    from megafin.models.gpt import build_model
    from megafin.models.sdpa_attention import SDPACoreAttention
    from tests.helpers import TINY_MODEL

    cfg = load_config(None, [*TINY_MODEL, "model.num_layers=1", "model.attention_backend=sdpa",
                             f"precision.dtype={dtype}"])
    model = build_model(cfg, vocab_size=64)
    core = next(m for m in model.modules() if isinstance(m, SDPACoreAttention))
    seen = []
    core.register_forward_hook(lambda module, args, out: seen.append(type(out.grad_fn).__name__))
    tokens = torch.randint(0, 64, (2, 16))
    model(tokens, torch.arange(16).unsqueeze(0), None, labels=tokens)
    assert len(seen) == 1
    assert (seen[0] == "_CausalAttentionBackward") is (kernel is not None), seen
