"""PyTorch SDPA for grouped-query attention, choosing how the key/value groups reach the kernel.

`enable_gqa=True` lets SDPA read each key/value head for its group of query heads without a copy. Flash takes no
attn_mask, and in some PyTorch releases no other fused CUDA kernel takes GQA either: GQA with a mask then falls back to
the math kernel, which materializes the [batch, heads, sq, sk] scores in fp32 (pytorch/pytorch#139586;
Comfy-Org/ComfyUI#15135 is that fallback's OOM at 27k tokens). torch 2.11 on an H100 and an H200 did not fall back
(the GPU check's `attn: SDPA, GQA with a mask` row: 4096 queries over 8192 keys, +0.4 GiB, no fp32 scores). So on
CUDA, with a mask, PyTorch's own dispatch checks are asked whether its memory-efficient or cuDNN kernel takes the call
with enable_gqa; where neither does, the keys and values are expanded to every query head first (what enable_gqa
means: `repeat_interleave` over the head axis), which the memory-efficient kernel takes with a mask. On CPU (the fused
kernel takes both) and without a mask: enable_gqa. Used where megafin passes masks with GQA: SDPACoreAttention's
explicit masks and shared-prompt packs, and the all-gather context-parallel attention.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def fused_kernel_takes_grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attn_mask: Optional[torch.Tensor], dropout_p: float, is_causal: bool) -> bool:
    """Whether PyTorch's memory-efficient or cuDNN attention accepts this call with enable_gqa (its dispatch's own
    checks, torch.backends.cuda.can_use_*); False where this PyTorch cannot say (before enable_gqa existed)."""
    cuda = torch.backends.cuda
    try:
        params = cuda.SDPAParams(query, key, value, attn_mask, dropout_p, is_causal, True)
        return any(can(params, False) for can in (cuda.can_use_efficient_attention, cuda.can_use_cudnn_attention))
    except (AttributeError, TypeError, RuntimeError):
        return False


def expands_groups(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor],
                   dropout_p: float = 0.0, is_causal: bool = False) -> bool:
    """Whether the key/value groups are expanded to every query head before SDPA (see the module docstring)."""
    grouped = query.size(-3) != key.size(-3)
    if not grouped or attn_mask is None or query.device.type != "cuda":
        return False
    return not fused_kernel_takes_grouped(query, key, value, attn_mask, dropout_p, is_causal)


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                 expand: Optional[bool] = None) -> torch.Tensor:
    """F.scaled_dot_product_attention on [..., heads, s, d] query and [..., groups, s, d] key/value; `expand`
    overrides the choice (tests, the GPU check)."""
    grouped = query.size(-3) != key.size(-3)
    if expand is None:
        expand = expands_groups(query, key, value, attn_mask, dropout_p, is_causal)
    if expand and grouped:
        per_group = query.size(-3) // key.size(-3)
        key, value = (x.repeat_interleave(per_group, dim=-3) for x in (key, value))
        grouped = False
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=grouped)
