"""Per-document sums over a packed batch (plain torch: an index_add is not a hot spot)."""
from __future__ import annotations

import torch


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """int64 ``[total]``: the document of each token; tokens at/after ``cu_seqlens[-1]`` get ``num_docs``."""
    pos = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True)


def segment_sum(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``out[d] = values[cu_seqlens[d]:cu_seqlens[d+1]].sum(0)``; ``values [T, ...]`` -> ``[num_docs, ...]``.

    Differentiable; tokens after the last document are ignored; empty documents give 0. E.g. DPO's sequence
    log-prob: ``segment_sum(logp * loss_mask, cu_seqlens)``."""
    num_docs = cu_seqlens.numel() - 1
    ids = document_ids(cu_seqlens, values.shape[0])
    out = torch.zeros((num_docs + 1, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add(0, ids, values)[:num_docs]
