"""Which of megatron-core's fused kernels a model runs with: the one place `model.fusions` is settled.

Megatron-LM turns these on by default on GPUs; each needs its kernel (CUDA, and for some Transformer Engine or
NVIDIA apex's CUDA extensions). `auto` is on exactly where this machine has the kernel, so the CPU runs the
unfused PyTorch paths (and the pinned golden curves) unchanged; `on` asks for it and is refused, one line, where
the kernel is missing; `off` never. `model.fusions.all=off` turns every fusion left at `auto` off. A kernel may
also depend on the run's precision (`precision.dtype`): each fusion's `missing` is asked with it.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from megafin.models.backends import cuda_available, te_available

logger = logging.getLogger(__name__)

FUSION_VALUES = ("auto", "on", "off")


def module_available(name: str) -> bool:
    """Importable without importing it (a CUDA extension module: apex builds them as top-level modules)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


Missing = Callable[[str], Optional[str]]  # precision.dtype -> why the kernel cannot run here, or None


def _needs_cuda(extra: Missing = lambda dtype: None) -> Missing:
    def missing(dtype: str) -> Optional[str]:
        return "no CUDA device" if not cuda_available() else extra(dtype)

    return missing


def _needs_module(name: str, where: str) -> Missing:
    return lambda dtype: None if module_available(name) else f"{name} is not importable ({where})"


def _cross_entropy_keeps_dtype(dtype: str) -> Optional[str]:
    # megatron-core's own fused cross entropy (the kernel without TE) returns the logits' gradient in bf16 whatever
    # their dtype (fused_cross_entropy.calculate_gradients): an fp32 or fp16 run would train on bf16-rounded
    # gradients. The GPU check found it: an fp32 RPO run drifted 1.8e-3 from the unfused loss in 8 steps.
    # TE's kernel (Triton) writes the gradient back in the logits' own dtype.
    if dtype in ("bf16", "fp8") or te_available():
        return None
    return f"without Transformer Engine the fused kernel returns bf16 gradients, and precision.dtype is {dtype}"


@dataclass(frozen=True)
class Fusion:
    key: str  # model.fusions.<key>
    config_field: str  # the TransformerConfig flag it sets
    kernel: str  # what runs when it is on (logged, README "GPU")
    missing: Missing  # why it cannot run on this machine at this precision, or None


_TE = lambda dtype: None if te_available() else "transformer_engine is not importable"  # noqa: E731

FUSIONS = (
    Fusion("rope", "apply_rope_fusion", "Transformer Engine's fused RoPE (bshd and packed thd)", _needs_cuda(_TE)),
    Fusion("bias_activation", "bias_activation_fusion", "megatron-core's compiled SwiGLU (torch.compile)",
           _needs_cuda()),
    Fusion("bias_dropout", "bias_dropout_fusion", "megatron-core's compiled bias-dropout-add", _needs_cuda()),
    Fusion("masked_softmax", "masked_softmax_fusion",
           "the scaled masked softmax CUDA kernel (model.attention_backend=local only; apex --cuda_ext)",
           _needs_cuda(_needs_module("scaled_upper_triang_masked_softmax_cuda", "NVIDIA apex built with --cuda_ext"))),
    # megatron-core's own linear layers (the output layer, and every layer of the local spec) need apex's wgrad
    # kernel even where TE's layers would do it themselves: ColumnParallelLinear refuses the flag without it.
    Fusion("gradient_accumulation", "gradient_accumulation_fusion",
           "weight gradients accumulated into the fp32 main_grad by the GEMM (apex's fused_weight_gradient_mlp_cuda)",
           _needs_cuda(_needs_module("fused_weight_gradient_mlp_cuda", "NVIDIA apex built with --cpp_ext --cuda_ext"))),
    Fusion("cross_entropy", "cross_entropy_loss_fusion",
           "fused vocab-parallel cross entropy (TE's kernel with TE, else megatron-core's compiled one; "
           "model.logprob_backend=megatron only)", _needs_cuda(_cross_entropy_keeps_dtype)),
    # megatron-core's persistent kernel is apex's FastLayerNorm, for LayerNorm; megafin's families use RMSNorm,
    # which the torch norm refuses the flag for and TE's (already fused) RMSNorm ignores.
    Fusion("persist_layer_norm", "persist_layer_norm", "apex's persistent LayerNorm kernel",
           lambda dtype: "megafin's models use RMSNorm; the persistent kernel is apex's LayerNorm only"),
)
BY_KEY = {f.key: f for f in FUSIONS}

_logged: set[tuple] = set()


def resolve_fusions(fusions: Any, dtype: str) -> dict[str, str]:
    """Every fusion's concrete setting (on | off) for this machine and precision.dtype, from a FusionsConfig; `auto`
    decided by what is importable here. Explicit `on` stays on (validation refuses it where the kernel is missing).
    Logged once."""
    default = getattr(fusions, "all", "auto")
    settled, why_off = {}, {}
    for f in FUSIONS:
        want = getattr(fusions, f.key)
        if want == "auto" and default == "off":
            want = "off"
        if want == "auto":
            reason = f.missing(dtype)
            want = "on" if reason is None else "off"
            if reason:
                why_off[f.key] = reason
        settled[f.key] = want
    line = tuple(sorted(settled.items()))
    if line not in _logged:
        _logged.add(line)
        on = [k for k, v in settled.items() if v == "on"]
        logger.info("fusions on: %s; off: %s", ", ".join(on) or "none",
                    ", ".join(f"{k} ({why_off[k]})" if k in why_off else k for k, v in settled.items() if v == "off")
                    or "none")
    return settled


def fusion_problems(fusions: Any, dtype: str) -> list[str]:
    """One `model.fusions.<key>: ...` line per bad value, or per fusion set `on` whose kernel this machine lacks."""
    problems = []
    if getattr(fusions, "all", "auto") not in ("auto", "off"):
        problems.append(f"model.fusions.all: expected auto or off, got {fusions.all!r}")
    for f in FUSIONS:
        value = getattr(fusions, f.key)
        if value not in FUSION_VALUES:
            problems.append(f"model.fusions.{f.key}: expected one of {', '.join(FUSION_VALUES)}, got {value!r}")
        elif value == "on" and (reason := f.missing(dtype)):
            problems.append(f"model.fusions.{f.key}: expected auto or off here ({reason}; it needs {f.kernel}), "
                            f"got 'on'")
    return problems


def transformer_config_flags(fusions: Any, dtype: str) -> dict[str, Any]:
    """The TransformerConfig keyword arguments of a FusionsConfig (an unresolved `auto` is settled here too)."""
    settled = resolve_fusions(fusions, dtype)
    flags: dict[str, Any] = {f.config_field: settled[f.key] == "on" for f in FUSIONS}
    if flags["cross_entropy_loss_fusion"]:
        flags["cross_entropy_fusion_impl"] = "te" if te_available() else "native"
    return flags
