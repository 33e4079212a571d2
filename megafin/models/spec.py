"""Which layer spec and attention backend a model gets: a choice by config and availability, logged once."""
from __future__ import annotations

import importlib.util
import logging

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec

logger = logging.getLogger(__name__)


def resolve_attention_backend(requested: str) -> str:
    """auto -> te (CUDA + Transformer Engine), triton (CUDA), sdpa (CPU)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        if importlib.util.find_spec("transformer_engine") is not None:
            return "te"
        return "triton"
    return "sdpa"


def llama_layer_spec(attention_backend: str) -> ModuleSpec:
    """The Llama block (RMSNorm, SwiGLU, RoPE, GQA) with the chosen core attention."""
    backend = resolve_attention_backend(attention_backend)
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        attention = spec.submodules.self_attention.submodules
        if backend == "sdpa":
            from megafin.models.sdpa_attention import SDPACoreAttention

            attention.core_attention = SDPACoreAttention
        elif backend == "triton":
            from megafin.models.triton_attention import TritonCoreAttention

            attention.core_attention = TritonCoreAttention
        elif backend != "local":
            raise ValueError(f"model.attention_backend: unknown backend {backend!r}")
    logger.info("attention backend: %s (requested %s)", backend, attention_backend)
    return spec
