"""Which attention and log-prob backends a model gets: the one place `auto` is settled into a concrete name."""
from __future__ import annotations

import importlib.util
from typing import Any

# model.attention_backend values. auto: te with CUDA + Transformer Engine, triton with CUDA, sdpa on CPU.
ATTENTION_BACKENDS = ("auto", "te", "triton", "sdpa", "local")
# The backends that attend across context-parallel ranks (parallel.cp > 1): Transformer Engine's own CP exchange, and
# sdpa's all-gather form (megafin/models/cp_attention.py).
CONTEXT_PARALLEL_BACKENDS = ("te", "sdpa")
# model.logprob_backend values. auto: triton (the packed log-prob kernel) with CUDA, megatron's cross entropy on CPU.
LOGPROB_BACKENDS = ("auto", "megatron", "triton")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def _attention(requested: str, cp: int = 1) -> str:
    if requested != "auto":
        return requested
    if cuda_available() and te_available():
        return "te"
    if cuda_available() and cp == 1:
        return "triton"
    return "sdpa"


def _logprob(requested: str) -> str:
    if requested != "auto":
        return requested
    return "triton" if cuda_available() else "megatron"


def resolve_backends(m: Any, cp: int = 1) -> tuple[str, str]:
    """(attention backend, log-prob backend) of a ModelConfig, `auto` replaced by what this machine runs; under
    context parallelism (cp > 1) auto picks one of CONTEXT_PARALLEL_BACKENDS."""
    return _attention(m.attention_backend, cp), _logprob(m.logprob_backend)
