"""Shared helpers: lazy Triton import, interpreter detection, debug poisoning of outputs."""
from __future__ import annotations

import contextlib
import os

import torch

_POISON = False


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotuning() -> bool:
    """False when ``MEGAFIN_KERNELS_AUTOTUNE=0``: each kernel keeps one GPU config instead of autotuning over several.
    Autotuning compiles and times every config for every new key (~30 s per dtype/shape on an H200), which makes
    the kernels' CUDA tests compile-bound; they set it to 0 (bench/gpu_check.py's kernels part autotunes)."""
    return os.environ.get("MEGAFIN_KERNELS_AUTOTUNE", "1") != "0"


def require_triton():
    """Import triton or raise an error that says what to do. Returns ``(triton, triton.language)``."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "megafin's kernels need Triton (`pip install triton`, or `pip install -e '.[test]'`). "
            "Without a GPU, also set TRITON_INTERPRET=1 before importing kernels to run them on CPU."
        ) from exc
    return triton, tl


def check_device(*tensors: torch.Tensor) -> None:
    """Fail clearly instead of Triton's '0 active drivers' when there is neither CUDA nor the interpreter."""
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if not interpreting():
            raise RuntimeError(
                f"kernels: tensor on {t.device} but TRITON_INTERPRET is not '1'. CPU tensors run only under the "
                "Triton interpreter: set TRITON_INTERPRET=1 before `import kernels`' first kernel call (before "
                "kernels.attention / kernels.logprobs are imported)."
            )


def empty(shape, dtype, device) -> torch.Tensor:
    """``torch.empty``, or NaN-filled while :func:`debug_poison` is on, so tests can show every element is written."""
    if _POISON and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def debug_poison(enabled: bool = True):
    """Within this context, outputs that kernels must fully write start as NaN instead of uninitialised memory."""
    global _POISON
    old, _POISON = _POISON, enabled
    try:
        yield
    finally:
        _POISON = old


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
