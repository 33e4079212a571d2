"""megafin/metrics/cuda_memory.py: a step's CUDA memory figures, split at the optimizer step, against a scripted
allocator (the real one needs CUDA; gpu_check's width8b row reads these on a GPU)."""
from __future__ import annotations

from megafin.metrics.cuda_memory import GIB, StepMemory


class FakeAllocator:
    """torch.cuda's allocator statistics: `use(n)` allocates n bytes, `free(n)` frees them."""

    def __init__(self, initialized: bool = True) -> None:
        self.now = self.peak = 0
        self.initialized = initialized

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def use(self, n: int) -> None:
        self.now += n
        self.peak = max(self.peak, self.now)

    def free(self, n: int) -> None:
        self.now -= n

    def memory_allocated(self) -> int:
        return self.now

    def max_memory_allocated(self) -> int:
        return self.peak

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.now


def step(mem: StepMemory, cuda: FakeAllocator, activations: int, optimizer_temporary: int) -> dict:
    mem.begin_step()
    cuda.use(activations)  # forward keeps them, backward frees them
    cuda.free(activations)
    mem.forward_backward_done()
    cuda.use(optimizer_temporary)
    cuda.free(optimizer_temporary)
    return mem.record()


def test_the_two_peaks_of_a_step_and_the_runs_peak():
    cuda = FakeAllocator()
    mem = StepMemory(cuda)
    cuda.use(10 * GIB)  # weights, gradients, optimizer states
    first = step(mem, cuda, activations=2 * GIB, optimizer_temporary=5 * GIB)
    assert first == {"mem_alloc_gib": 10.0, "mem_max_alloc_gib": 15.0, "mem_fwd_bwd_peak_gib": 12.0}
    # a later step with more activations and no temporary: its own forward/backward peak; the run's peak stays
    second = step(mem, cuda, activations=3 * GIB, optimizer_temporary=0)
    assert second == {"mem_alloc_gib": 10.0, "mem_max_alloc_gib": 15.0, "mem_fwd_bwd_peak_gib": 13.0}


def test_nothing_without_cuda():
    cuda = FakeAllocator(initialized=False)
    mem = StepMemory(cuda)
    assert step(mem, cuda, activations=GIB, optimizer_temporary=GIB) == {}
