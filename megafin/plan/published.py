"""Published throughput of Llama-3 training runs, and what the planner makes of the same configurations.

`python -m megafin.plan.published` prints the "planner vs published" table (README, the lead's note); the tests in
tests/unit/test_plan_published.py check the same rows. Two FLOPs conventions meet here: megafin's count (6N + 12 L h s,
attention counted as if not causal; torchtitan's count too) and Megatron's (the attention term halved for causal
masking; what Megatron-Bridge's "model TFLOP/s" uses)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megafin.config.schema import Config, ModelConfig
from megafin.plan.estimate import Estimate, Layout, Workload, estimate
from megafin.plan.gpus import GPUS

LLAMA3_8B = dict(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8, ffn_hidden_size=14336,
                 vocab_size=128256, max_position_embeddings=8192)
LLAMA3_70B = dict(num_layers=80, hidden_size=8192, num_attention_heads=64, num_query_groups=8, ffn_hidden_size=28672,
                  vocab_size=128256, max_position_embeddings=8192)


@dataclass(frozen=True)
class Published:
    source: str
    model: str
    shape: dict
    gpus: int
    dtype: str
    seq_length: int
    global_batch: int  # sequences
    layout: Layout
    tokens_per_s_per_gpu: float
    tflops_per_gpu: Optional[float]  # as published (Megatron-Bridge: causal convention)
    mfu: Optional[float]  # as published (torchtitan: megafin's convention, vs 989 TFLOP/s)
    flops_convention: str  # causal | full
    note: str


PUBLISHED = (
    Published("Megatron-Bridge 25.11, DGX-H100", "Llama-3-8B", LLAMA3_8B, 8, "fp8", 8192, 128,
              Layout(tp=1, pp=1, mbs=1, recompute="full"), 14451, 744, None, "causal",
              "FP8 current scaling, Megatron FSDP, 5 of 32 layers recomputed (planner: all 32)"),
    Published("Megatron-Bridge 25.11, DGX-H100", "Llama-3-70B", LLAMA3_70B, 64, "fp8", 8192, 128,
              Layout(tp=4, pp=8, vp=5, mbs=1, sequence_parallel=True), 1602, 719, None, "causal",
              "FP8 current scaling, TP4 PP8 VP5, no recompute"),
    Published("torchtitan docs/performance.md, H100 96GB 500W", "Llama-3.1-8B", LLAMA3_8B, 8, "bf16", 8192, 16,
              Layout(tp=1, pp=1, mbs=2, recompute="selective"), 5762, None, 0.33, "full",
              "FSDP, selective activation checkpointing, no torch.compile"),
    Published("torchtitan docs/performance.md, H100 96GB 500W", "Llama-3.1-8B", LLAMA3_8B, 8, "fp8", 8192, 16,
              Layout(tp=1, pp=1, mbs=2, recompute="selective"), 8532, None, None, "full",
              "FSDP + torch.compile + Float8, selective activation checkpointing"),
)


def workload(p: Published, efficiency: float = 0.4) -> Workload:
    cfg = Config()
    cfg.model = ModelConfig(**p.shape)
    cfg.data.seq_length = p.seq_length
    cfg.parallel.global_batch_size = p.global_batch
    cfg.precision.dtype = p.dtype
    return Workload(cfg=cfg, vocab_size=cfg.model.vocab_size, gpus=p.gpus, gpu=GPUS["h100"], efficiency=efficiency)


def causal_flops_per_token(w: Workload) -> float:
    """Megatron's convention: megafin's count with the attention term halved (causal masking)."""
    m = w.cfg.model
    return w.flops_per_token() - 6.0 * m.num_layers * m.hidden_size * w.seq_length


def implied_efficiency(p: Published) -> float:
    """The efficiency (megafin's count, vs the dense bf16 peak) at which the planner reproduces the published
    tokens/s: what the published run reached, with the planner's recompute and bubble overheads taken out."""
    w = workload(p)
    at_one = estimate(Workload(**{**w.__dict__, "efficiency": 1.0}), p.layout)
    return p.tokens_per_s_per_gpu / at_one.tokens_per_s_per_gpu


def compare(p: Published) -> dict:
    w = workload(p)
    fpt = w.flops_per_token()
    counted = (causal_flops_per_token(w) if p.flops_convention == "causal" else fpt) * p.tokens_per_s_per_gpu / 1e12
    e: Estimate = estimate(Workload(**{**w.__dict__, "efficiency": implied_efficiency(p)}), p.layout)
    return {"published": p, "planner_tflops": counted, "planner_mfu": fpt * p.tokens_per_s_per_gpu / 989e12,
            "implied_efficiency": implied_efficiency(p), "estimate": e, "default": estimate(w, p.layout)}


def main() -> None:
    print("| source | model | GPUs | dtype | layout | published tok/s/GPU | published TFLOP/s (MFU) | planner TFLOP/s "
          "(same convention) | MFU in megafin's count | planner memory GiB/GPU (fits 80 GB H100?) |")
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for p in PUBLISHED:
        c = compare(p)
        pub = f"{p.tflops_per_gpu:g}" if p.tflops_per_gpu else (f"({p.mfu:.0%})" if p.mfu else "-")
        e = c["estimate"]
        # FSDP shards weights and gradients too; megafin's layouts do not, so the planner's memory is not comparable
        memory = "n/a (FSDP)" if "FSDP" in p.note else f"{e.total_gib:.1f} ({'yes' if e.fits else 'no'})"
        print(f"| {p.source} | {p.model} | {p.gpus} | {p.dtype} | {p.layout.describe()} "
              f"| {p.tokens_per_s_per_gpu:,.0f} | {pub} | {c['planner_tflops']:.0f} ({p.flops_convention}) | {c['planner_mfu']:.1%} "
              f"| {memory} |")
    print("\nnotes:")
    for p in PUBLISHED:
        print(f"- {p.model} {p.dtype} ({p.source}): {p.note}")


if __name__ == "__main__":
    main()
