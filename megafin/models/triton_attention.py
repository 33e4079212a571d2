"""A megatron-core `core_attention` backed by the Triton varlen flash-attention kernel (kernels/).

Selected by `model.attention_backend: triton` (and by `auto` on CUDA without Transformer Engine). THD packed
batches attend within documents only (cu_seqlens); bshd batches are causal per sequence. Without CUDA the kernel
runs only under TRITON_INTERPRET=1 (tests); the CPU default is the SDPA backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

import kernels


class TritonCoreAttention(DotProductAttention):
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
        assert attention_bias is None, "attention_bias is not supported by the Triton attention backend"
        assert attention_mask is None, "the Triton attention backend is causal only (no explicit masks)"
        assert not self.training or self.attention_dropout.p == 0.0, "attention dropout is not supported"
        return kernels.core_attention(query, key, value, packed_seq_params, softmax_scale=self.softmax_scale)
