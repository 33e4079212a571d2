"""megafin kernels: Triton kernels for packed (THD) sequences.

``import kernels`` needs only torch; Triton is imported on the first kernel call (a clear ImportError if it is
missing). On a machine without CUDA, set ``TRITON_INTERPRET=1`` before the first call to run the kernels on CPU.

- :func:`varlen_attention` - causal flash attention over packed documents (GQA, fp32/fp16/bf16), autograd.
- :func:`packed_logprobs` - per-token log p(label) from hidden states and the (vocab-parallel) output weight,
  never materialising the ``[T, vocab]`` log-softmax; autograd to hidden and weight.
- :func:`logprobs_from_logits` - the same from (vocab-parallel) logits.
- :func:`segment_sum` - per-document sums over ``cu_seqlens``.
- :func:`core_attention` - varlen_attention in megatron-core's core_attention layouts (THD or sbhd).
"""
from __future__ import annotations

from kernels._common import debug_poison
from kernels.mcore import core_attention
from kernels.segment import segment_sum

__all__ = ["varlen_attention", "packed_logprobs", "logprobs_from_logits", "segment_sum", "core_attention",
           "debug_poison"]


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None, causal=True):
    """Varlen flash attention. q ``[T, Hq, D]``, k/v ``[T, Hkv, D]``, int32 ``cu_seqlens`` ``[num_docs+1]``,
    ``max_seqlen`` (int) the longest document; ``softmax_scale`` defaults to ``1/sqrt(D)``.
    Returns ``[T, Hq, D]`` in q's dtype; differentiable in q, k, v."""
    from kernels import attention

    return attention.varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=softmax_scale, causal=causal)


def packed_logprobs(hidden, weight, labels, chunk_size=None, tp_group=None):
    """log p(label) per token, fp32 ``[T]``: ``hidden [T, H]``, ``weight [V_local, H]`` (this rank's vocab rows
    ``[rank*V_local, (rank+1)*V_local)`` under TP), ``labels [T]`` global ids, ``-100`` = ignore (logp 0, no grad).
    ``chunk_size``: vocab rows per backward chunk (the largest temporary is ``[T, chunk_size]``)."""
    from kernels import logprobs

    return logprobs.packed_logprobs(hidden, weight, labels, chunk_size=chunk_size, tp_group=tp_group)


def logprobs_from_logits(logits, labels, tp_group=None):
    """log p(label) per token, fp32 ``[T]``, from ``logits [T, V_local]`` (vocab-parallel under TP)."""
    from kernels import logprobs

    return logprobs.logprobs_from_logits(logits, labels, tp_group=tp_group)
