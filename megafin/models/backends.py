"""Which attention and log-prob backends a model gets: the one place `auto` is settled into a concrete name."""
from __future__ import annotations

import importlib.util
from typing import Any

# model.attention_backend values. auto: te with CUDA + Transformer Engine, triton with CUDA, sdpa on CPU.
ATTENTION_BACKENDS = ("auto", "te", "triton", "sdpa", "local")
# model.logprob_backend values. auto: triton (the packed log-prob kernel) with CUDA, megatron's cross entropy on CPU.
LOGPROB_BACKENDS = ("auto", "megatron", "triton")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def _attention(requested: str) -> str:
    if requested != "auto":
        return requested
    if cuda_available():
        return "te" if te_available() else "triton"
    return "sdpa"


def _logprob(requested: str) -> str:
    if requested != "auto":
        return requested
    return "triton" if cuda_available() else "megatron"


def resolve_backends(m: Any) -> tuple[str, str]:
    """(attention backend, log-prob backend) of a ModelConfig, `auto` replaced by what this machine runs."""
    return _attention(m.attention_backend), _logprob(m.logprob_backend)
