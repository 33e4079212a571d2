"""PyTorch SDPA for grouped-query attention, choosing how the key/value groups reach the kernel.

`enable_gqa=True` lets SDPA read each key/value head for its group of query heads without a copy. On CUDA only the
flash kernel takes it, and flash takes no attn_mask: GQA with a mask falls back to the math kernel, which materializes
the [batch, heads, sq, sk] scores in fp32 (pytorch/pytorch#139586; Comfy-Org/ComfyUI#15135 is that fallback's OOM at
27k tokens). So on CUDA, with a mask, the keys and values are expanded to every query head first (what enable_gqa
means: `repeat_interleave` over the head axis), which the memory-efficient kernel takes with a mask. Elsewhere (the
CPU's fused kernel takes both) and without a mask: enable_gqa, as before. Used where megafin passes masks with GQA:
SDPACoreAttention's explicit masks and shared-prompt packs, and the all-gather context-parallel attention.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def expands_groups(device_type: str, grouped: bool, masked: bool) -> bool:
    """Whether the key/value groups are expanded to every query head before SDPA (see the module docstring)."""
    return grouped and masked and device_type == "cuda"


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                 expand: Optional[bool] = None) -> torch.Tensor:
    """F.scaled_dot_product_attention on [..., heads, s, d] query and [..., groups, s, d] key/value; `expand`
    overrides the choice (tests)."""
    grouped = query.size(-3) != key.size(-3)
    if expand is None:
        expand = expands_groups(query.device.type, grouped, attn_mask is not None)
    if expand and grouped:
        per_group = query.size(-3) // key.size(-3)
        key, value = (x.repeat_interleave(per_group, dim=-3) for x in (key, value))
        grouped = False
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=grouped)
