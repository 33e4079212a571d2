"""Context-parallel core attention without Transformer Engine: all-gather K and V over the CP group (parallel.cp).

Each CP rank holds 2 of the 2*cp chunks of every sequence (megafin/data/context_parallel.py: load balanced for
causality). Here each rank gathers every rank's keys and values, in rank order, and runs SDPA for its own queries
with a mask of the GLOBAL positions: a query sees a key of its own document at the same or an earlier position (a
[b, s] row is one document). This is the all-gather CP the Llama 3 paper chose (K/V are small under GQA); Transformer
Engine's ring (p2p) exchange overlaps the transfer with compute instead, and is what a GPU with TE runs
(model.attention_backend=te). The backward of the all-gather is a reduce-scatter of the keys' and values' gradient:
each rank gets the sum, over every rank's queries, of the gradient of its own chunks.

megatron-core's local DotProductAttention asserts context_parallel_size == 1; this module is its replacement chosen
through the layer spec (megafin/models/spec.py), not a patch.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.distributed as dist
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType

from megafin.data.context_parallel import CPLayout, bshd_layout
from megafin.models.grouped_sdpa import grouped_sdpa
from megafin.models.sdpa_attention import SDPACoreAttention


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 (the sequence) over `group`, rank order; backward: reduce-scatter of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        n = dist.get_world_size(group)
        if dist.get_backend(group) == "nccl":
            out = x.new_empty((n * x.size(0), *x.shape[1:]))
            dist.all_gather_into_tensor(out, x, group=group)
            return out
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        group = ctx.group
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        local = grad.size(0) // n
        if dist.get_backend(group) == "nccl":
            out = grad.new_empty((local, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        # gloo has no reduce-scatter: an all-reduce, then this rank's slice
        total = grad.clone()
        dist.all_reduce(total, group=group)
        return total.narrow(0, rank * local, local).contiguous(), None


def gather_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _GatherSequence.apply(x, group)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float,
           dropout: float = 0.0) -> torch.Tensor:
    """SDPA of local queries [b, h, sq, d] over gathered keys/values [b, g, sk, d] under a [sq, sk] boolean mask."""
    return grouped_sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


class ContextParallelSDPAAttention(SDPACoreAttention):
    """SDPACoreAttention's drop-in (`core_attention` in a ModuleSpec) for parallel.cp > 1: bshd and THD batches."""

    def __init__(self, config: Any, *args: Any, pg_collection: Any = None, **kwargs: Any) -> None:
        # DotProductAttention refuses cp > 1 (it would attend within the local chunks only); this class attends over
        # the gathered sequence itself, so it builds from a copy that says cp=1 and keeps the real config.
        single = copy.copy(config)
        single.context_parallel_size = 1
        super().__init__(single, *args, pg_collection=pg_collection, **kwargs)
        self.config = config
        if pg_collection is not None and getattr(pg_collection, "cp", None) is not None:
            self.cp_group = pg_collection.cp
        else:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()
        self._bshd_masks: dict[tuple, torch.Tensor] = {}

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None,
                packed_seq_params: Optional[PackedSeqParams] = None) -> torch.Tensor:
        cp = dist.get_world_size(self.cp_group)
        if cp == 1:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        assert attention_bias is None and attention_mask is None, \
            "context parallelism supports causal attention without bias or explicit mask"
        dropout = self.attention_dropout.p if self.training else 0.0
        # K and V travel in one collective: [2, s, ...] gathered along s
        kv = gather_sequence(torch.stack([key, value], dim=1), self.cp_group)
        key_all, value_all = kv[:, 0], kv[:, 1]
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            mask = self._thd_mask(packed_seq_params, query.device)
            # [t, h, d] -> [1, h, t, d]
            q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key_all, value_all))
            out = attend(q, k, v, mask, self.softmax_scale, dropout)
            return out.squeeze(0).transpose(0, 1)  # [t, h, d]: megatron reshapes THD output itself
        mask = self._bshd_mask(query.size(0) * cp, cp, dist.get_rank(self.cp_group), query.device)
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key_all, value_all))  # [s, b, h, d] -> [b, h, s, d]
        out = attend(q, k, v, mask, self.softmax_scale, dropout)
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)  # [s, b, h*d]

    def _bshd_mask(self, seq_len: int, cp: int, rank: int, device: torch.device) -> torch.Tensor:
        key = (seq_len, cp, rank, device)
        if key not in self._bshd_masks:
            self._bshd_masks[key] = bshd_layout(seq_len, cp, rank).to(device).mask()
        return self._bshd_masks[key]

    @staticmethod
    def _thd_mask(params: PackedSeqParams, device: torch.device) -> torch.Tensor:
        """The packed batch's mask, built once per forward (cached on the params every layer shares)."""
        mask = params.__dict__.get("_megafin_cp_mask")
        if mask is None:
            layout: Optional[CPLayout] = getattr(params, "cp_layout", None)
            if layout is None:
                raise ValueError("a packed batch under context parallelism needs its cp_layout "
                                 "(megafin.data.context_parallel.split_thd)")
            mask = params.__dict__["_megafin_cp_mask"] = layout.to(device).mask()
        return mask
