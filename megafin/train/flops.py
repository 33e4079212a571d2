"""Model FLOPs per token and the peak they are measured against (for MFU)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from megafin.config.schema import ModelConfig

# Dense bf16 peaks (TFLOP/s) by device name; the config's logging.peak_tflops overrides.
_GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def flops_per_token(m: ModelConfig, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + causal-agnostic attention scores (12 L h s)."""
    h, L = m.hidden_size, m.num_layers
    kv = m.num_query_groups * (h // m.num_attention_heads)
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * m.ffn_hidden_size
    matmul_params = L * per_layer + h * vocab_size
    return 6.0 * matmul_params + 12.0 * L * h * seq_length


def measure_matmul_tflops(n: int = 1024, repeats: int = 8) -> float:
    """fp32 matmul throughput on this CPU with the current thread count (the notes' 140-170 GFLOP/s on 2 cores).
    Best of several runs; other processes loading the CPU at start-up make it low and the MFU high."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


@dataclass
class PeakFlops:
    tflops_per_device: Optional[float]

    @classmethod
    def for_this_device(cls, configured: float) -> "PeakFlops":
        if configured > 0:
            return cls(configured)
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            for key, value in _GPU_PEAK_TFLOPS.items():
                if key in name:
                    return cls(value)
            return cls(None)
        return cls(measure_matmul_tflops())

    def mfu(self, achieved_flops_per_s: float, world_size: int) -> Optional[float]:
        if not self.tflops_per_device:
            return None
        return achieved_flops_per_s / (self.tflops_per_device * 1e12 * world_size)
