"""The call a megatron-core ``core_attention`` makes into :func:`kernels.varlen_attention` (no megatron import).

megatron-core's ``Attention.forward`` hands ``core_attention`` (TP-local heads):
- THD packed batches (``packed_seq_params.qkv_format == "thd"``): query ``[t, np, hn]``, key/value ``[t, ng, hn]``
  (``Attention`` already squeezed the dummy batch dim). The return may be ``[t, np, hn]``: ``Attention`` reshapes
  it to ``[t, 1, np*hn]`` itself.
- otherwise (sbhd): query ``[s, b, np, hn]``, key/value ``[s, b, ng, hn]``; the return must be ``[s, b, np*hn]``.

A megatron ``DotProductAttention`` subclass only has to forward to :func:`core_attention` (see kernels/README.md).
"""
from __future__ import annotations

import torch


def core_attention(query, key, value, packed_seq_params=None, softmax_scale=None, causal=True):
    """Causal attention in megatron-core's core_attention layouts (see the module docstring).

    THD: uses ``packed_seq_params.cu_seqlens_q`` / ``max_seqlen_q`` (self-attention: the kv ones must be the same
    documents). ``cu_seqlens_q_padded`` (context-parallel padding) is not supported. sbhd: each of the ``b``
    sequences is one document of length ``s``.
    """
    from kernels import varlen_attention

    if packed_seq_params is not None and getattr(packed_seq_params, "qkv_format", None) == "thd":
        p = packed_seq_params
        cu = p.cu_seqlens_q
        padded = getattr(p, "cu_seqlens_q_padded", None)
        if padded is not None and padded is not cu and not torch.equal(padded, cu):
            raise NotImplementedError("kernels.core_attention: cu_seqlens_q_padded (CP padding) is not supported")
        if cu.dtype != torch.int32:
            cu = cu.to(torch.int32)
        max_seqlen = p.max_seqlen_q
        if max_seqlen is None:  # costs a device sync: pass max_seqlen_q in PackedSeqParams
            max_seqlen = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
        if query.dim() == 4:  # [t, 1, np, hn] if the caller did not squeeze
            query, key, value = query.squeeze(1), key.squeeze(1), value.squeeze(1)
        return varlen_attention(query, key, value, cu, int(max_seqlen), softmax_scale=softmax_scale, causal=causal)

    s, b, hq, d = query.shape
    hkv = key.shape[2]
    # [s, b, h, d] -> [b*s, h, d]: each batch row becomes one document
    q, k, v = (x.transpose(0, 1).reshape(b * s, x.shape[2], d) for x in (query, key, value))
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=query.device)
    out = varlen_attention(q, k, v, cu, s, softmax_scale=softmax_scale, causal=causal)
    assert k.shape[1] == hkv
    return out.view(b, s, hq * d).transpose(0, 1).contiguous()
