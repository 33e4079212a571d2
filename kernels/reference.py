"""float64 PyTorch references for the kernels (used by tests/kernels). Slow and simple on purpose."""
from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def attention_ref(q, k, v, cu_seqlens, softmax_scale=None, causal=True):
    """Per-document softmax attention in float64. q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` -> ``[T, Hq, D]`` float64.

    Differentiable (run it on float64 leaves to get reference gradients). Tokens after the last document -> 0."""
    q, k, v = q.double(), k.double(), v.double()
    T, Hq, D = q.shape
    group = Hq // k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    cu = [int(x) for x in cu_seqlens.tolist()]
    outs = []
    for s, e in zip(cu[:-1], cu[1:]):
        if e == s:
            continue
        qd = q[s:e].transpose(0, 1)  # [Hq, L, D]
        kd = k[s:e].repeat_interleave(group, dim=1).transpose(0, 1)
        vd = v[s:e].repeat_interleave(group, dim=1).transpose(0, 1)
        scores = qd @ kd.transpose(1, 2) * scale
        if causal:
            L = e - s
            mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((scores.softmax(-1) @ vd).transpose(0, 1))
    tail = T - cu[-1]
    if tail:
        outs.append(q.new_zeros(tail, Hq, D) * q[cu[-1]:])  # keeps the graph connected; value 0
    return torch.cat(outs, 0) if outs else q.new_zeros(0, Hq, D)


def logprobs_from_logits_ref(logits, labels):
    """log_softmax(logits).gather(labels) in float64; ``-100`` labels give 0. ``logits [T, V]`` (full vocab)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    valid = labels != IGNORE_INDEX
    picked = logp.gather(1, labels.clamp(min=0).long().unsqueeze(1)).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def packed_logprobs_ref(hidden, weight, labels):
    """float64 reference of :func:`kernels.packed_logprobs` with the full ``weight [V, H]``."""
    return logprobs_from_logits_ref(hidden.double() @ weight.double().t(), labels)


def segment_sum_ref(values, cu_seqlens):
    cu = [int(x) for x in cu_seqlens.tolist()]
    vals = values.double()
    return torch.stack([vals[s:e].sum(0) for s, e in zip(cu[:-1], cu[1:])]) if len(cu) > 1 else vals[:0]
