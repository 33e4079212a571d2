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
