"""A training step's CUDA allocator figures, as Megatron-LM's report_memory gives them, split at the optimizer step.

`mem_alloc_gib`: allocated after the step; `mem_max_alloc_gib`: the peak since the start (what a planner's per-GPU
estimate is checked against); `mem_fwd_bwd_peak_gib`: this step's peak before the optimizer step. The two peaks are
the two sides of `megafin plan`'s max (activations vs the optimizer step's temporaries). Nothing on CPU.
"""
from __future__ import annotations

from typing import Any

import torch

GIB = 2 ** 30


class StepMemory:
    def __init__(self, cuda: Any = torch.cuda) -> None:
        self.cuda = cuda
        self.run_peak = 0  # bytes, kept across the per-step resets of the allocator's peak
        self.fwd_bwd_peak = 0

    def active(self) -> bool:
        return self.cuda.is_available() and self.cuda.is_initialized()

    def begin_step(self) -> None:
        if self.active():
            self.run_peak = max(self.run_peak, self.cuda.max_memory_allocated())
            self.cuda.reset_peak_memory_stats()

    def forward_backward_done(self) -> None:
        if self.active():
            self.fwd_bwd_peak = self.cuda.max_memory_allocated()

    def record(self) -> dict[str, float]:
        if not self.active():
            return {}
        self.run_peak = max(self.run_peak, self.cuda.max_memory_allocated())
        return {"mem_alloc_gib": self.cuda.memory_allocated() / GIB, "mem_max_alloc_gib": self.run_peak / GIB,
                "mem_fwd_bwd_peak_gib": self.fwd_bwd_peak / GIB}
