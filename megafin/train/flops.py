"""Model FLOPs per token and the peak they are measured against (for MFU)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from megafin.config.schema import ModelConfig

# Dense bf16 peaks (TFLOP/s) by device name; the config's logging.peak_tflops overrides.
_GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def layer_flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token of the transformer layers' weight matmuls: 6 x their parameters (forward 2,
    backward 4)."""
    h, L = m.hidden_size, m.num_layers
    kv = m.num_query_groups * (h // m.num_attention_heads)
    return 6.0 * L * (h * (h + 2 * kv) + h * h + 3 * h * m.ffn_hidden_size)


def logits_flops_per_position(m: ModelConfig, vocab_size: int) -> float:
    """Training FLOPs of the output layer at one position."""
    return 6.0 * m.hidden_size * vocab_size


def matmul_flops_per_token(m: ModelConfig, vocab_size: int) -> float:
    """Training FLOPs per token of every weight matmul, the output layer's included: 6N."""
    return layer_flops_per_token(m) + logits_flops_per_position(m, vocab_size)


def attention_flops_per_pair(m: ModelConfig) -> float:
    """Training FLOPs per (query, key) pair: scores and the weighted sum, 4 h per layer forward, x3 with backward."""
    return 12.0 * m.num_layers * m.hidden_size


def flops_per_token(m: ModelConfig, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token of a `seq_length` sequence: 6 x matmul parameters + causal-agnostic attention scores
    (12 L h s), the convention of Megatron-LM's and torchtitan's published MFU (the planner's count)."""
    return matmul_flops_per_token(m, vocab_size) + attention_flops_per_pair(m) * seq_length


def logit_positions(batch: dict, targets_only: bool) -> int:
    """The positions a micro-batch's output layer runs at: every token, or with `model.loss_positions: targets`
    (megafin.models.logprob_model) only those the loss mask selects (a preference pair's answers: a few %)."""
    if targets_only and "loss_mask" in batch:
        return int(batch["loss_mask"].count_nonzero())
    return batch["tokens"].numel()


def attended_pairs(batch: dict) -> int:
    """The (query, key) pairs a micro-batch's attention covers, causal-agnostic as flops_per_token counts them: s^2
    per row of a [b, s] batch; per document of a packed one, its length times (its length + the earlier tokens it
    also sees: a shared prompt), padding excluded. A packed batch of short documents does far less attention work
    than its seq_length suggests: counted at seq_length, a tiny DPO run logged an MFU of 140-190%."""
    if "cu_seqlens" not in batch:
        b, s = batch["tokens"].shape
        return b * s * s
    lengths = batch["cu_seqlens"].diff().tolist()[:batch["num_docs"]]
    prefix = batch.get("attn_prefix") or [0] * len(lengths)
    return sum(n * (n + p) for n, p in zip(lengths, prefix))


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
