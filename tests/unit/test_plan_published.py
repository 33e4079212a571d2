"""The planner's FLOPs and throughput against published Llama-3 runs (megafin/plan/published.py holds the numbers
and prints the table): Megatron-Bridge 25.11 on DGX-H100, torchtitan's docs/performance.md."""
from __future__ import annotations

import pytest

from megafin.plan.published import PUBLISHED, causal_flops_per_token, workload


def _row(model, dtype, source):
    return next(p for p in PUBLISHED if p.model == model and p.dtype == dtype and p.source.startswith(source))


@pytest.mark.parametrize("model", ["Llama-3-8B", "Llama-3-70B"])
def test_flops_per_token_times_tokens_is_megatron_bridge_tflops(model):
    p = _row(model, "fp8", "Megatron-Bridge")
    assert causal_flops_per_token(workload(p)) * p.tokens_per_s_per_gpu / 1e12 == pytest.approx(p.tflops_per_gpu,
                                                                                                 rel=0.02)


def test_megafin_count_gives_torchtitans_mfu():
    p = _row("Llama-3.1-8B", "bf16", "torchtitan")
    assert workload(p).flops_per_token() * p.tokens_per_s_per_gpu / 989e12 == pytest.approx(p.mfu, abs=0.01)


@pytest.mark.parametrize("model", ["Llama-3-8B", "Llama-3-70B"])
def test_planner_tokens_at_the_published_mfu(model):
    """At the MFU the published TFLOP/s imply (converted to megafin's count), the planner's tokens/s/GPU is the
    published one: exactly at pp=1 without recompute, less the planner's 1F1B bubble (7/(5*64) = 2.2%) for the 70B."""
    from dataclasses import replace

    from megafin.plan import estimate

    p = _row(model, "fp8", "Megatron-Bridge")
    w = workload(p)
    mfu = p.tflops_per_gpu * 1e12 * w.flops_per_token() / causal_flops_per_token(w) / 989e12
    e = estimate(replace(w, efficiency=mfu), replace(p.layout, recompute="none"))
    assert e.tokens_per_s_per_gpu == pytest.approx(p.tokens_per_s_per_gpu, rel=0.03)
    assert e.mfu == pytest.approx(mfu / (1 + (p.layout.pp - 1) / (p.layout.vp * e.micro_batches)), rel=1e-6)


def test_published_70b_layout_fits_the_memory_it_ran_in():
    """Megatron-Bridge ran Llama-3-70B FP8 at TP4 PP8 VP5 on 80 GB H100s without recompute or FSDP: the planner's
    estimate for it must not exceed the GPU's memory (it is within the reserve: the planner is conservative)."""
    from megafin.plan import estimate

    p = _row("Llama-3-70B", "fp8", "Megatron-Bridge")
    e = estimate(workload(p), p.layout)
    assert e.total_gib <= workload(p).gpu.memory_gib
