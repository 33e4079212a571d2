"""A megatron-core `core_attention` that calls PyTorch SDPA: bshd causal batches and THD packed batches.

The stock local DotProductAttention materializes scores with baddbmm, expands GQA with copies and runs a masked
softmax; on CPU that is ~0.7x HF's speed (notes). SDPA with `enable_gqa` avoids all three. Packed batches
(`PackedSeqParams`, qkv_format="thd") attend within documents only: documents of similar length are padded into
one batched causal SDPA call per group (see `_THDPlan`), so no token attends across a document boundary.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPACoreAttention(DotProductAttention):
    """Drop-in for DotProductAttention in a ModuleSpec (`core_attention=SDPACoreAttention`)."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        assert attention_bias is None, "attention_bias is not supported by SDPACoreAttention"
        dropout = self.attention_dropout.p if self.training else 0.0
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            return self._forward_thd(query, key, value, packed_seq_params, dropout)
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        causal = attention_mask is None
        mask = None if causal else ~attention_mask  # megatron masks mark positions to hide with True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                             scale=self.softmax_scale, enable_gqa=q.size(1) != k.size(1))
        # [b, h, s, d] -> [s, b, h*d]
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)

    def _forward_thd(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     params: PackedSeqParams, dropout: float) -> torch.Tensor:
        # [t, h, d] in and out (megatron reshapes THD output itself). Documents of similar length are padded into
        # one [n, h, L, d] causal SDPA call: one call per group instead of one per document, which on CPU is most of
        # the cost for short documents. Right padding needs no mask: under causality a real query never sees a key
        # past its own position, and padded query rows are dropped.
        plan = _thd_plan(params)
        pieces = []
        for rows, n, length in plan.groups:
            q, k, v = (x.index_select(0, rows).view(n, length, *x.shape[1:]).transpose(1, 2)
                       for x in (query, key, value))
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                               scale=self.softmax_scale, enable_gqa=q.size(1) != k.size(1))
            pieces.append(o.transpose(1, 2).reshape(n * length, o.size(1), o.size(3)))
        padded = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        out = padded.index_select(0, plan.unpad)  # the documents' tokens, in pack order
        if out.size(0) < query.size(0):  # tail padding past cu_seqlens[-1]: zeros, no gradient
            out = torch.cat([out, out.new_zeros(query.size(0) - out.size(0), *out.shape[1:])], dim=0)
        return out


class _THDPlan:
    """How a THD micro-batch's documents are grouped and padded, computed once per forward (every layer shares it).

    groups: (rows, n, L) per group: `rows` indexes the [t] token axis for n documents padded to L (a padding slot
    repeats the document's last token; causality hides it). unpad: for each document token in pack order, its row
    in the concatenated padded groups."""

    # A group may cost at most this much more attention work (n * L^2) than its documents alone (sum of len^2).
    MAX_WASTE = 1.5

    def __init__(self, cu_seqlens: list[int], device: torch.device) -> None:
        assert cu_seqlens[0] == 0, "cu_seqlens must start at 0"
        lens = [(e - s, s) for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:]) if e > s]
        order = sorted(lens, key=lambda x: -x[0])
        groups: list[list[tuple[int, int]]] = []
        for doc in order:
            if groups:
                g = groups[-1]
                longest = g[0][0]
                exact = sum(n * n for n, _ in g) + doc[0] * doc[0]
                if (len(g) + 1) * longest * longest <= self.MAX_WASTE * exact:
                    g.append(doc)
                    continue
            groups.append([doc])
        self.groups = []
        where = {}  # document start -> row of its first token in the padded concatenation
        base = 0
        for g in groups:
            longest = g[0][0]
            rows = []
            for length, start in g:
                where[start] = base + len(rows)
                rows.extend(range(start, start + length))
                rows.extend([start + length - 1] * (longest - length))
            self.groups.append((torch.tensor(rows, dtype=torch.long, device=device), len(g), longest))
            base += len(rows)
        unpad = []
        for length, start in sorted(lens, key=lambda x: x[1]):
            unpad.extend(range(where[start], where[start] + length))
        self.unpad = torch.tensor(unpad, dtype=torch.long, device=device)


def _thd_plan(params: PackedSeqParams) -> _THDPlan:
    """The plan for these PackedSeqParams, cached on the object: all layers of one forward share the instance."""
    plan = params.__dict__.get("_megafin_thd_plan")
    if plan is None:
        plan = params.__dict__["_megafin_thd_plan"] = _THDPlan(params.cu_seqlens_q.tolist(), params.cu_seqlens_q.device)
    return plan
