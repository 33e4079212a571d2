"""A megatron-core `core_attention` that calls PyTorch SDPA: bshd causal batches and THD packed batches.

The stock local DotProductAttention materializes scores with baddbmm, expands GQA with copies and runs a masked
softmax; on CPU that is ~0.7x HF's speed (notes). SDPA with `enable_gqa` avoids all three (grouped_sdpa.py: with a
mask on CUDA the groups are expanded instead). Packed batches
(`PackedSeqParams`, qkv_format="thd") attend within documents only: documents of similar length are padded into
one batched causal SDPA call per group (see `_THDPlan`), so no token attends across a document boundary.
Causal bshd batches on CPU in fp32 up to cpu_causal_attention.MAX_SEQ positions go to cpu_causal_attention.py
instead (blocks of GEMMs, faster than the CPU flash kernel there).
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from megafin.models import cpu_causal_attention
from megafin.models.grouped_sdpa import grouped_sdpa


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
        if cpu_causal_attention.takes(query, key, attention_mask, dropout):
            return cpu_causal_attention.cpu_causal_attention(query, key, value, self.softmax_scale)
        # [s, b, h, d] -> [b, h, s, d]. On CPU as contiguous copies: as views of megatron's sequence-first layout
        # (v inside the fused QKV output) a row of one head lies b * width floats from the next, and the CPU flash
        # kernel ran ~12% slower forward and backward on them than on HF's layout (notes); the copies cost ~1%.
        # Not when decoding with a KV cache (fewer queries than keys): there the copy would be the whole cache.
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        if q.device.type == "cpu" and q.size(2) == k.size(2):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        causal = attention_mask is None
        mask = None if causal else ~attention_mask  # megatron masks mark positions to hide with True
        if causal and q.size(2) != k.size(2):
            # KV-cache decoding: the queries are the last tokens of a longer cached sequence. SDPA's is_causal
            # aligns the causal triangle top-left (query 0 sees key 0 only), so align it bottom-right instead.
            causal, mask = False, _bottom_right_causal(q.size(2), k.size(2), q.device)
        out = grouped_sdpa(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.softmax_scale)
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
        for g in plan.groups:
            q = query.index_select(0, g.q_rows).view(g.n, g.lq, *query.shape[1:]).transpose(1, 2)
            k, v = (x.index_select(0, g.kv_rows).view(g.n, g.lk, *x.shape[1:]).transpose(1, 2) for x in (key, value))
            o = grouped_sdpa(q, k, v, attn_mask=g.mask, dropout_p=dropout, is_causal=g.mask is None,
                             scale=self.softmax_scale)
            pieces.append(o.transpose(1, 2).reshape(g.n * g.lq, o.size(1), o.size(3)))
        padded = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        out = padded.index_select(0, plan.unpad)  # the documents' tokens, in pack order
        if out.size(0) < query.size(0):  # tail padding past cu_seqlens[-1]: zeros, no gradient
            out = torch.cat([out, out.new_zeros(query.size(0) - out.size(0), *out.shape[1:])], dim=0)
        return out


def _bottom_right_causal(lq: int, lk: int, device: torch.device) -> Optional[torch.Tensor]:
    """Query i (of the last lq positions) sees keys 0 .. lk - lq + i; None when every query sees every key."""
    if lq == 1:
        return None
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


class _Group:
    """One SDPA call: n documents' queries padded to lq rows, their keys/values to lk rows (`q_rows`, `kv_rows` index
    the token axis). mask None: plain causal documents (lq == lk). Otherwise a boolean [n, 1, lq, lk] mask: the
    documents attend to a prefix of the document before them (a shared prompt) and causally to themselves."""

    def __init__(self, q_rows: list[int], kv_rows: list[int], n: int, lq: int, lk: int,
                 mask: Optional[torch.Tensor], device: torch.device) -> None:
        self.q_rows = torch.tensor(q_rows, dtype=torch.long, device=device)
        self.kv_rows = torch.tensor(kv_rows, dtype=torch.long, device=device)
        self.n, self.lq, self.lk = n, lq, lk
        self.mask = mask.to(device) if mask is not None else None


class _THDPlan:
    """How a THD micro-batch's documents are grouped and padded, computed once per forward (every layer shares it).

    Documents of similar size share one padded SDPA call (see `_Group`); a padding slot repeats one of the
    document's own rows (causality or the mask hides it). `unpad`: for each document token in pack order, its row in
    the concatenated outputs of the groups. `prefix[i]`: how many leading tokens of document i-1 document i also
    attends to (0 for ordinary documents)."""

    # A group may cost at most this much more attention work (n * lq * lk) than its documents alone.
    MAX_WASTE = 1.5

    def __init__(self, cu_seqlens: list[int], device: torch.device, prefix: Optional[list[int]] = None) -> None:
        assert cu_seqlens[0] == 0, "cu_seqlens must start at 0"
        prefix = prefix or [0] * (len(cu_seqlens) - 1)
        # (queries, prefix length, start of the document, start of the previous document)
        docs = [(e - s, prefix[i], s, cu_seqlens[i - 1] if i else 0)
                for i, (s, e) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])) if e > s]
        self.groups: list[_Group] = []
        where: dict[int, int] = {}  # document start -> row of its first query in the concatenated outputs
        base = 0
        for members in self._grouped([d for d in docs if not d[1]]) + self._grouped([d for d in docs if d[1]]):
            lq = max(n for n, _, _, _ in members)
            lk = max(n + p for n, p, _, _ in members)
            q_rows, kv_rows = [], []
            mask = torch.zeros(len(members), 1, lq, lk, dtype=torch.bool) if lk != lq or members[0][1] else None
            for j, (n, p, start, prev) in enumerate(members):
                where[start] = base + j * lq
                q_rows += list(range(start, start + n)) + [start + n - 1] * (lq - n)
                keys = list(range(prev, prev + p)) + list(range(start, start + n))
                kv_rows += keys + [start + n - 1] * (lk - len(keys))
                if mask is not None:
                    mask[j, 0, :n, :p] = True
                    mask[j, 0, :n, p:p + n] = torch.ones(n, n, dtype=torch.bool).tril()
                    mask[j, 0, n:, 0] = True  # padded query rows (dropped) must not be all-masked
            self.groups.append(_Group(q_rows, kv_rows, len(members), lq, lk, mask, device))
            base += len(members) * lq
        unpad: list[int] = []
        for n, _, start, _ in sorted(docs, key=lambda d: d[2]):
            unpad.extend(range(where[start], where[start] + n))
        self.unpad = torch.tensor(unpad, dtype=torch.long, device=device)

    @classmethod
    def _grouped(cls, docs: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
        """Greedy, largest first: a document joins the current group while the padded cost stays within
        MAX_WASTE of the exact cost."""
        groups: list[list[tuple[int, int, int, int]]] = []
        for doc in sorted(docs, key=lambda d: -(d[0] + d[1])):
            if groups:
                g = groups[-1]
                lq, lk = max(n for n, _, _, _ in g), max(n + p for n, p, _, _ in g)
                exact = sum(n * (n + p) for n, p, _, _ in g) + doc[0] * (doc[0] + doc[1])
                if (len(g) + 1) * lq * lk <= cls.MAX_WASTE * exact:
                    g.append(doc)
                    continue
            groups.append([doc])
        return groups


def _thd_plan(params: PackedSeqParams) -> _THDPlan:
    """The plan for these PackedSeqParams, cached on the object: all layers of one forward share the instance.
    A shared-prompt batch carries its per-document prefix lengths as `attn_prefix` (MegafinPackedSeqParams)."""
    plan = params.__dict__.get("_megafin_thd_plan")
    if plan is None:
        plan = params.__dict__["_megafin_thd_plan"] = _THDPlan(
            params.cu_seqlens_q.tolist(), params.cu_seqlens_q.device, getattr(params, "attn_prefix", None))
    return plan
