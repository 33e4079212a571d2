"""The GPUs `megafin plan` knows: memory as the driver reports it, dense peaks, and the reserve kept free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GIB = 1024 ** 3
# Kept free on every GPU, besides what the model needs: the CUDA context, NCCL's buffers and cuBLAS/cuDNN workspaces
# (a fixed part), and the caching allocator's fragmentation (a share of the rest).
RESERVE_FIXED_GIB = 4.0
RESERVE_FRAGMENTATION = 0.05


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # torch.cuda.get_device_properties().total_memory / GiB
    bf16_tflops: float  # dense; the peak megafin's logged MFU is measured against (megafin/train/flops.py)
    fp8_tflops: Optional[float]  # None: no FP8 tensor cores

    @property
    def usable_gib(self) -> float:
        return (self.memory_gib - RESERVE_FIXED_GIB) * (1.0 - RESERVE_FRAGMENTATION)

    @property
    def reserve_text(self) -> str:
        return f"{RESERVE_FIXED_GIB:g} GiB + {RESERVE_FRAGMENTATION:.0%} of the rest kept free"


GPUS = {
    "h100": GPU("H100 SXM 80GB", 79.6, 989.0, 1979.0),
    "h200": GPU("H200 SXM 141GB", 140.4, 989.0, 1979.0),
    "a100": GPU("A100 SXM 80GB", 79.2, 312.0, None),
}
GPUS_PER_NODE = 8  # tensor parallelism stays inside a node's NVLink domain
