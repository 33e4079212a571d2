"""Causal self-attention for CPU training at short sequences: blocks of GEMMs that skip the masked triangle, with the
softmax kept for a backward that needs no recomputation.

PyTorch's CPU flash kernel does the fewest FLOPs per byte kept, but at head dim 64 it runs at a fraction of the
GEMM rate, and its backward recomputes the scores. Here the queries go in blocks of BLOCK positions; block i
multiplies only the keys up to its end (the skipped upper triangle is ~1/2 of the scores for many blocks) and keeps
its softmax, so the backward is four GEMMs and one elementwise pass per block. Measured on 2 cores (AVX-512, fp32,
batch 8, 8 heads / 4 groups, seq 512, head dim 64), forward + backward per layer: ~85 ms against the flash kernel's
~125 ms. The price is memory: ~heads x seq / 2 fp32 scores per token instead of one fp32 logsumexp per head, so
`takes` limits it to MAX_SEQ.

Works in megatron-core's sequence-first layout: query [s, b, heads, d], key/value [s, b, groups, d] (grouped-query
attention: query head j uses group j // (heads / groups)), output [s, b, heads * d]. Inside, the queries are laid
out [b, groups, s, heads per group, d], so one block of positions of one group is a contiguous [rows, d] matrix
for all its query heads.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

BLOCK = 64  # query positions per block; 32 and 128 measured no faster at seq 512, head dim 64
# The kept scores are seq / (2 d) times the queries' size: 4x at 512 with d = 64. At 1024 (8x) the forward was
# already slower than the flash kernel's and forward + backward only ~15% faster.
MAX_SEQ = 512


def takes(query: torch.Tensor, key: torch.Tensor, attention_mask: Optional[torch.Tensor], dropout: float) -> bool:
    """Whether this call runs here rather than in SDPA: causal (no explicit mask) on CPU in fp32, queries and keys of
    one length (not KV-cache decoding), no dropout, at most MAX_SEQ positions. Whether gradients are wanted does not
    matter: a recomputed forward (model.recompute) must run the kernel its first forward ran."""
    return (query.device.type == "cpu" and query.dtype == torch.float32 and attention_mask is None and dropout == 0.0
            and query.size(0) == key.size(0) <= MAX_SEQ)


def query_blocks(s: int) -> list[tuple[int, int]]:
    """[start, end) of each block of query positions."""
    return [(i, min(i + BLOCK, s)) for i in range(0, s, BLOCK)]


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        s, b, h, d = query.shape
        g = key.size(2)
        r = h // g
        # [s, b, g, r, d] -> [b, g, s, r, d], scaled once here instead of every score
        q = torch.empty(b, g, s, r, d, dtype=query.dtype)
        torch.mul(query.reshape(s, b, g, r, d).permute(1, 2, 0, 3, 4), scale, out=q)
        k, v = (x.permute(1, 2, 0, 3).contiguous() for x in (key, value))  # [b, g, s, d]
        out = torch.empty(s, b, h * d, dtype=query.dtype)
        mask = torch.full((BLOCK, BLOCK), float("-inf")).triu_(1).unsqueeze(1)  # [query position, head, key position]
        keep = any(ctx.needs_input_grad[:3])  # no softmax kept for an inference forward
        probs = []
        for i0, i1 in query_blocks(s):
            n = i1 - i0
            scores = torch.matmul(q[:, :, i0:i1].view(b, g, n * r, d), k[:, :, :i1].transpose(-1, -2))
            scores.view(b, g, n, r, i1)[..., i0:].add_(mask[:n, :, :n])
            p = torch.softmax(scores, dim=-1)  # [b, g, n r, i1]
            o = torch.matmul(p, v[:, :, :i1])  # [b, g, n r, d]
            out[i0:i1].view(n, b, g, r, d).copy_(o.view(b, g, n, r, d).permute(2, 0, 1, 3, 4))
            if keep:
                probs.append(p)
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        q, k, v, out, *probs = ctx.saved_tensors
        b, g, s, r, d = q.shape
        grad_out = grad_out.contiguous()
        # delta = rowsum(dO * O), per query row: the softmax backward's correction term
        delta = (grad_out * out).view(s, b, g, r, d).sum(-1).permute(1, 2, 0, 3).contiguous()  # [b, g, s, r]
        go = grad_out.view(s, b, g, r, d).permute(1, 2, 0, 3, 4).contiguous()  # [b, g, s, r, d]
        dq = torch.empty(s, b, g, r, d, dtype=q.dtype)
        dk = torch.zeros(b * g, s, d, dtype=q.dtype)
        dv = torch.zeros(b * g, s, d, dtype=q.dtype)
        k3, v3 = k.view(b * g, s, d), v.view(b * g, s, d)
        for (i0, i1), p in zip(query_blocks(s), probs):
            n = i1 - i0
            go_i = go[:, :, i0:i1].view(b * g, n * r, d)
            p3 = p.view(b * g, n * r, i1)
            dv[:, :i1] += torch.bmm(p3.transpose(1, 2), go_i)
            dp = torch.bmm(go_i, v3[:, :i1].transpose(1, 2))  # [b g, n r, i1]
            ds = dp.view(b, g, n * r, i1).sub_(delta[:, :, i0:i1].view(b, g, n * r, 1)).mul_(p).view(b * g, n * r, i1)
            dq_i = torch.bmm(ds, k3[:, :i1])  # [b g, n r, d], the scale applied below with the layout change
            torch.mul(dq_i.view(b, g, n, r, d).permute(2, 0, 1, 3, 4), ctx.scale, out=dq[i0:i1])
            dk[:, :i1] += torch.bmm(ds.transpose(1, 2), q[:, :, i0:i1].view(b * g, n * r, d))
        dk, dv = (x.view(b, g, s, d).permute(2, 0, 1, 3).contiguous() for x in (dk, dv))
        return dq.view(s, b, g * r, d), dk, dv, None


def cpu_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         scale: Optional[float] = None) -> torch.Tensor:
    """Causal attention of query [s, b, heads, d] over key/value [s, b, groups, d]: [s, b, heads * d]."""
    scale = query.size(-1) ** -0.5 if scale is None else scale
    return _CausalAttention.apply(query, key, value, scale)
