"""Whether this CPU multiplies bf16 matrices in hardware, for a warning at the start of a bf16 CPU run.

Without AVX512-BF16 or AMX (AVX2-only CPUs: AMD Zen 3, Intel before Cooper Lake) PyTorch's CPU bf16 GEMM takes a
fallback measured at ~1 GFLOP/s on 2 Zen 3 cores, against ~100 GFLOP/s for the same product in fp32 (torch 2.13,
1024 x 1024). A bf16 run there is a hundred times slower than an fp32 one; on a CPU with either extension it is not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_matmul(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[bool]:
    """True or False from the CPU's flags; None where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(f in flags for f in BF16_FLAGS)
    return None


def slow_bf16_warning(dtype: str, device_type: str) -> Optional[str]:
    """The one line to log for a bf16 run on a CPU without bf16 matrix instructions, else None."""
    if dtype == "bf16" and device_type == "cpu" and native_bf16_matmul() is False:
        return ("precision.dtype=bf16 on a CPU without AVX512-BF16 or AMX: PyTorch multiplies bf16 matrices here "
                "about 100x slower than fp32 (precision.dtype=fp32 is the fast choice on this machine)")
    return None
