"""The layer spec of a backend (megatron-core's BackendSpecProvider idea): Transformer Engine's fused layers, or the
local spec with Triton, SDPA or megatron's own core attention."""
from __future__ import annotations

import logging

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec

logger = logging.getLogger(__name__)


def decoder_layer_spec(backend: str, requested: str, cp: int = 1) -> ModuleSpec:
    """The decoder block (RMSNorm, SwiGLU, RoPE, GQA) with the core attention of `backend`, a concrete name
    (megafin.models.backends.resolve_backends settled `auto`); `requested` is only logged. cp > 1 (context
    parallelism): TE's attention does it itself; sdpa becomes its all-gather form (validated: no other backend)."""
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        # RoPE from cos/sin shared by all layers (megafin/models/rope.py); TE's spec has its fused RoPE.
        from megafin.models.rope import CachedRopeSelfAttention

        spec.submodules.self_attention.module = CachedRopeSelfAttention
        # SwiGLU with a backward that needs no cat (megafin/models/swiglu.py); see uses_activation_module.
        from megafin.models.swiglu import SwiGLU

        spec.submodules.mlp.submodules.activation_func = SwiGLU
        # torch's RMSNorm forward with a closed-form backward (megafin/models/rms_norm.py); the final norm, which
        # GPTModel builds itself, stays torch's.
        from megafin.models.rms_norm import RMSNorm

        spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = RMSNorm
        attention = spec.submodules.self_attention.submodules
        if backend == "sdpa" and cp > 1:
            from megafin.models.cp_attention import ContextParallelSDPAAttention

            attention.core_attention = ContextParallelSDPAAttention
        elif backend == "sdpa":
            from megafin.models.sdpa_attention import SDPACoreAttention

            attention.core_attention = SDPACoreAttention
        elif backend == "triton":
            from megafin.models.triton_attention import TritonCoreAttention

            attention.core_attention = TritonCoreAttention
        elif backend != "local":
            raise ValueError(f"model.attention_backend: unknown backend {backend!r}")
        if cp > 1 and backend != "sdpa":
            raise ValueError(f"model.attention_backend: {backend} cannot attend across parallel.cp={cp} ranks "
                             f"(use te or sdpa)")
    logger.info("attention backend: %s (requested %s)", backend, requested)
    return spec


def uses_activation_module(spec: ModuleSpec) -> bool:
    """Whether the MLP builds its activation from the spec: megatron-core does so only with
    config.use_te_activation_func, which must then be set (it calls the module on fc1's whole output)."""
    return getattr(spec.submodules.mlp.submodules, "activation_func", None) is not None
