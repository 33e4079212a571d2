"""`megafin plan`'s output: one table (the recipe's layout, then the layouts that fit, best first), or JSON."""
from __future__ import annotations

import json
from typing import Any, Optional

from megafin.plan.estimate import Estimate, Workload
from megafin.plan.layouts import overrides

COLUMNS = ("rank", "layout", "dp", "weights", "grads", "optim", "optim w/o dist", "act/layer", "in flight",
           "activations", "logits", "optim step", "total GiB", "fits", "step s", "tok/s/GPU", "MFU")


def _row(label: str, e: Estimate) -> list[str]:
    return [label, e.layout.describe(), str(e.dp), f"{e.weights_gib:.1f}", f"{e.gradients_gib:.1f}",
            f"{e.optimizer_gib:.1f}", f"{e.optimizer_replicated_gib:.1f}", f"{e.activations_per_layer_gib:.2f}",
            f"{e.micro_batches_in_flight:g}", f"{e.activations_gib:.1f}", f"{e.logits_gib:.1f}",
            f"{e.optimizer_step_gib:.1f}", f"{e.total_gib:.1f}", "yes" if e.fits else "NO", f"{e.step_time_s:.2f}",
            f"{e.tokens_per_s_per_gpu:,.0f}", f"{e.mfu:.0%}"]


def header(w: Workload, recipe: str) -> list[str]:
    cfg, m = w.cfg, w.cfg.model
    return [
        f"megafin plan: {recipe} on {w.gpus} x {w.gpu.name}, {cfg.precision.dtype}, stage {cfg.stage}",
        f"memory: {w.gpu.memory_gib:g} GiB per GPU, {w.gpu.usable_gib:.1f} usable ({w.gpu.reserve_text}); GiB per "
        f"GPU on the fuller pipeline stage",
        f"model: {m.num_layers} layers x hidden {m.hidden_size}, vocab {w.vocab_size}; seq {w.seq_length}, global "
        f"batch {cfg.parallel.global_batch_size} = {w.tokens_per_step:,} tokens",
        f"time: {w.flops_per_token() / 1e9:.2f} GFLOP/token (megafin's count: 6N + 12 L h s) at "
        f"{w.efficiency:.0%} of {w.gpu.bf16_tflops:g} TFLOP/s dense bf16, + recompute's extra forward + pipeline "
        f"bubble; communication not modelled",
    ]


def table(w: Workload, recipe: str, own: Optional[Estimate], own_problem: str, ranked: list[Estimate],
          top: int) -> str:
    rows = [list(COLUMNS)]
    notes = []
    if own is not None:
        rows.append(_row("recipe", own))
    else:
        notes.append(f"recipe layout: cannot run on {w.gpus} GPUs: {own_problem}")
    fitting = [e for e in ranked if e.fits][:top]
    for i, e in enumerate(fitting, 1):
        rows.append(_row(str(i), e))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = header(w, recipe) + [""]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))
    if not fitting:
        notes.append(f"no layout fits {w.gpus} x {w.gpu.name}: add GPUs or shorten data.seq_length")
    else:
        notes.append(f"best: {' '.join(overrides(fitting[0].layout))}  (* = a key this megafin's schema lacks)")
        runnable = next((e for e in ranked if e.fits and not any(o.endswith("*") for o in overrides(e.layout))), None)
        if runnable is not None and runnable is not fitting[0]:
            notes.append(f"best with this megafin's keys: {' '.join(overrides(runnable.layout))}")
    return "\n".join(lines + [""] + notes)


def as_json(w: Workload, recipe: str, own: Optional[Estimate], own_problem: str, ranked: list[Estimate]) -> str:
    def entry(e: Estimate) -> dict[str, Any]:
        return {**e.as_dict(), "overrides": overrides(e.layout)}

    doc = {
        "recipe": recipe, "gpus": w.gpus, "gpu": w.gpu.name, "gpu_memory_gib": w.gpu.memory_gib,
        "usable_gib": w.gpu.usable_gib, "reserve": w.gpu.reserve_text, "dtype": w.cfg.precision.dtype,
        "efficiency": w.efficiency, "peak_bf16_tflops": w.gpu.bf16_tflops, "flops_per_token": w.flops_per_token(),
        "tokens_per_step": w.tokens_per_step, "recipe_layout": entry(own) if own else None,
        "recipe_layout_problem": own_problem or None, "layouts": [entry(e) for e in ranked if e.fits],
    }
    return json.dumps(doc, indent=1)
