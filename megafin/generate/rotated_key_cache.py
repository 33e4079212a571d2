"""Keys enter megatron-core's static KV cache already rotated (RoPE applied once), instead of every cached key being
rotated again at every decode step.

megatron-core 0.16's static-batching path (`Attention._adjust_key_value_for_inference` without flash-decode, which
needs CUDA kernels) caches keys before RoPE and then applies RoPE to the whole cached prefix in every step: per layer
and step, cos/sin and a rotation of [length, batch, groups, dim], the largest cost of a CPU decode step after the
matmuls. Its dynamic-batching path already does what is done here: rotate the new keys, cache them, and tell the
caller that only the query still needs RoPE (`(q_pos_emb, None)`). Scores are the same up to float rounding.
"""
from __future__ import annotations

from typing import Any

import torch

_CLASSES: dict[type, type] = {}


def _rotated_subclass(cls: type) -> type:
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    class RotatedKeyCache(cls):  # type: ignore[misc, valid-type]
        def _adjust_key_value_for_inference(self, inference_context: Any, query: torch.Tensor, key: torch.Tensor,
                                            value: torch.Tensor, rotary_pos_emb: Any, *args: Any,
                                            **kwargs: Any) -> tuple:
            if (inference_context is None or rotary_pos_emb is None or self.config.flash_decode
                    or not inference_context.is_static_batching()):
                return super()._adjust_key_value_for_inference(inference_context, query, key, value, rotary_pos_emb,
                                                               *args, **kwargs)
            q_pos_emb, k_pos_emb = rotary_pos_emb
            start = inference_context.sequence_len_offset
            end = start + key.size(0)
            key = apply_rotary_pos_emb(key, k_pos_emb[start:end], config=self.config, cp_group=self.pg_collection.cp)
            out = super()._adjust_key_value_for_inference(inference_context, query, key, value, None, *args,
                                                          **kwargs)
            query, key, value, _, mask_type, block_table = out
            return query, key, value, (q_pos_emb[start:end], None), mask_type, block_table

    RotatedKeyCache.__name__ = RotatedKeyCache.__qualname__ = f"RotatedKeyCache{cls.__name__}"
    return RotatedKeyCache


def cache_rotated_keys(model: torch.nn.Module) -> None:
    """Make every self-attention of a loaded GPTModel cache rotated keys (its class swapped for a subclass that
    overrides one method; parameters and state dict unchanged)."""
    for layer in model.decoder.layers:
        att = layer.self_attention
        cls = type(att)
        if cls not in _CLASSES:
            _CLASSES[cls] = _rotated_subclass(cls)
        att.__class__ = _CLASSES[cls]
