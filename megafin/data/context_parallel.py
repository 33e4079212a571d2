"""Context parallelism's batch split: which tokens of a micro-batch each CP rank holds (parallel.cp).

Under causal attention a late token costs more than an early one, so a sequence is cut into 2*cp equal chunks and
rank r holds chunks r and 2*cp-1-r, in that order: every rank gets the same attention work. That is megatron-core's
get_batch_on_this_cp_rank for [b, s] batches. A packed (THD) micro-batch is split the same way document by document,
as Transformer Engine's thd_get_partitioned_indices does (megatron-core's get_thd_batch_on_this_cp_rank): each
document is first padded at its end to a multiple of 2*cp (filler tokens: no loss, and no real token attends to them,
since they come after it), then each rank takes chunks r and 2*cp-1-r of every document, documents in order.

Both attention paths read the same split: Transformer Engine's (cu_seqlens plus cu_seqlens_padded) and megafin's
all-gather attention (megafin/models/cp_attention.py), which needs each token's document and position in it:
`CPLayout`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# What a packed micro-batch carries per token, split along the sequence (dim 1); everything else is per batch.
_PER_TOKEN = ("tokens", "labels", "loss_mask", "position_ids")


def chunks_of_rank(cp: int, rank: int) -> tuple[int, int]:
    """The two of the 2*cp chunks rank `rank` holds, in the order it holds them."""
    return rank, 2 * cp - 1 - rank


def bshd_indices(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Global positions of the tokens rank `rank` holds of a seq_len sequence, in its local order."""
    if seq_len % (2 * cp):
        raise ValueError(f"sequence length {seq_len} is not a multiple of 2*cp={2 * cp}")
    c = seq_len // (2 * cp)
    return torch.cat([torch.arange(k * c, (k + 1) * c) for k in chunks_of_rank(cp, rank)])


def thd_indices(cu_seqlens_padded: list[int], cp: int, rank: int) -> torch.Tensor:
    """Rows of a padded THD sequence that rank `rank` holds: chunks rank and 2*cp-1-rank of each document (every
    document length a multiple of 2*cp), documents in order; Transformer Engine's thd_get_partitioned_indices."""
    parts = []
    for start, end in zip(cu_seqlens_padded[:-1], cu_seqlens_padded[1:]):
        if (end - start) % (2 * cp):
            raise ValueError(f"padded document [{start}, {end}) is not a multiple of 2*cp={2 * cp}")
        c = (end - start) // (2 * cp)
        parts += [torch.arange(start + k * c, start + (k + 1) * c) for k in chunks_of_rank(cp, rank)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def padded_cu_seqlens(cu_seqlens: list[int], cp: int) -> list[int]:
    """Document boundaries after padding every document to a multiple of 2*cp."""
    out = [0]
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        out.append(out[-1] + -(-(end - start) // (2 * cp)) * 2 * cp)
    return out


@dataclass
class CPLayout:
    """Where this rank's tokens and the gathered keys sit, for attention under context parallelism.

    The all-gather attention gathers every rank's K/V in rank order, so key j of the gathered sequence is token
    `kv_index[j]` of the (padded) whole; query i is token `q_index[i]`. `*_doc`: its document, `*_pos`: its position
    in the document (the RoPE row). A [b, s] batch is one document per row."""
    q_doc: torch.Tensor
    q_pos: torch.Tensor
    kv_doc: torch.Tensor
    kv_pos: torch.Tensor

    def mask(self) -> torch.Tensor:
        """[local queries, gathered keys], True where the query sees the key: same document, not later."""
        return (self.q_doc[:, None] == self.kv_doc[None, :]) & (self.kv_pos[None, :] <= self.q_pos[:, None])

    def to(self, device: torch.device) -> "CPLayout":
        return CPLayout(*(t.to(device) for t in (self.q_doc, self.q_pos, self.kv_doc, self.kv_pos)))


def bshd_layout(seq_len: int, cp: int, rank: int) -> CPLayout:
    """The layout of a [b, s] batch's local chunks (seq_len: the whole sequence)."""
    q = bshd_indices(seq_len, cp, rank)
    kv = torch.cat([bshd_indices(seq_len, cp, r) for r in range(cp)])
    return CPLayout(torch.zeros_like(q), q, torch.zeros_like(kv), kv)


def split_bshd(batch: dict[str, Any], cp: int, rank: int) -> dict[str, Any]:
    """This rank's chunks of a [b, s] micro-batch (every per-token tensor along dim 1)."""
    seq = batch["tokens"].size(1)
    index = bshd_indices(seq, cp, rank)
    return {k: (v.index_select(1, index) if isinstance(v, torch.Tensor) and v.dim() == 2 and v.size(1) == seq else v)
            for k, v in batch.items()}


def split_thd(batch: dict[str, Any], cp: int, rank: int) -> dict[str, Any]:
    """This rank's part of a packed micro-batch: documents padded to multiples of 2*cp, then split per document.
    Adds `cu_seqlens_padded` (the padded whole's boundaries; `cu_seqlens` keeps the real lengths, as Transformer
    Engine takes them), a `max_seqlen` of the padded documents and the `cp_layout`."""
    cu = batch["cu_seqlens"].tolist()
    cu_pad = padded_cu_seqlens(cu, cp)
    total = cu_pad[-1]
    # where each real token goes in the padded whole; filler rows keep zeros (tokens 0, no loss)
    doc_lens = [e - s for s, e in zip(cu[:-1], cu[1:])]
    dest = torch.cat([torch.arange(p, p + n) for p, n in zip(cu_pad[:-1], doc_lens)]) if doc_lens else \
        torch.zeros(0, dtype=torch.long)
    padded_lens = torch.tensor([e - s for s, e in zip(cu_pad[:-1], cu_pad[1:])])
    doc = torch.repeat_interleave(torch.arange(len(padded_lens)), padded_lens)
    pos = torch.arange(total) - torch.repeat_interleave(torch.tensor(cu_pad[:-1]), padded_lens)
    out = dict(batch)
    index = thd_indices(cu_pad, cp, rank)
    for key in _PER_TOKEN:
        value = batch[key]
        if key == "position_ids":  # filler continues its document's positions
            whole = pos[None] + _first_positions(value, cu, padded_lens)
        else:
            whole = value.new_zeros(value.size(0), total)
            whole[:, dest] = value[:, :cu[-1]]
        out[key] = whole.index_select(1, index)
    kv = torch.cat([thd_indices(cu_pad, cp, r) for r in range(cp)])
    out["cu_seqlens_padded"] = torch.tensor(cu_pad, dtype=torch.int32)
    out["max_seqlen"] = int(padded_lens.max()) if len(padded_lens) else 0
    out["cp_layout"] = CPLayout(doc[index], pos[index], doc[kv], pos[kv])
    return out


def _first_positions(position_ids: torch.Tensor, cu: list[int], padded_lens: torch.Tensor) -> torch.Tensor:
    """Each padded token's document's first position id (0 unless a document starts later), per padded token."""
    firsts = position_ids[:, cu[:-1]] if len(cu) > 1 else position_ids[:, :0]
    return firsts.repeat_interleave(padded_lens, dim=1)


def split_for_context_parallel(batch: dict[str, Any], cp: int, rank: int) -> dict[str, Any]:
    """This CP rank's part of a micro-batch: packed (THD, `cu_seqlens`) or [b, s]."""
    if cp == 1:
        return batch
    return split_thd(batch, cp, rank) if "cu_seqlens" in batch else split_bshd(batch, cp, rank)
