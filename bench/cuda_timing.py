"""Seconds per call of a CUDA function, as the GPU benchmarks time kernels (bench/kernels.py, bench/gpu_check.py):
one warm-up call, then `reps` calls between two synchronizations. Imported as `bench.cuda_timing` (the scripts put
the repository first on sys.path; `kernels` there is the top-level Triton package, not bench/kernels.py)."""
from __future__ import annotations

import time
from typing import Callable


def time_cuda(fn: Callable[[], object], reps: int = 10) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def time_cuda_with_peak(fn: Callable[[], object], reps: int = 3) -> tuple[float, float]:
    """(seconds per call, GiB allocated at the peak above what was allocated before the first call)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t = time_cuda(fn, reps)
    return t, (torch.cuda.max_memory_allocated() - base) / 2**30
