"""The layouts `megafin plan` weighs: the recipe's own, and every (TP, PP, CP, recompute, micro-batch) that divides
the GPUs, the model and the global batch, ranked by estimated throughput."""
from __future__ import annotations

import dataclasses
from typing import Iterator

from megafin.config.schema import Config, ModelConfig, ParallelConfig
from megafin.models.layout import layout_problems
from megafin.plan.estimate import RECOMPUTE, Estimate, Layout, Workload, estimate
from megafin.plan.gpus import GPUS_PER_NODE

MICRO_BATCHES = (1, 2, 4, 8)
CONTEXT_PARALLEL = (1, 2, 4, 8)


def schema_has(section: type, key: str) -> bool:
    return key in {f.name for f in dataclasses.fields(section)}


def recipe_layout(cfg: Config) -> Layout:
    """The layout the recipe asks for (parallel.cp is megatron-core's context_parallel_size). Keys this megafin's
    schema may not have yet (recompute, virtual pipeline stages) count as off."""
    par, m = cfg.parallel, cfg.model
    return Layout(tp=par.tp, pp=par.pp, cp=par.cp, vp=int(getattr(par, "virtual_pp", 1) or 1),
                  mbs=par.micro_batch_size, recompute=str(getattr(m, "recompute", "none")),
                  distributed_optimizer=par.distributed_optimizer, sequence_parallel=par.sequence_parallel)


def layout_problem(w: Workload, lay: Layout) -> str:
    """Why `lay` cannot run this workload on w.gpus GPUs ('' when it can)."""
    m, G = w.cfg.model, w.cfg.parallel.global_batch_size
    if w.gpus % lay.model_parallel():
        return f"tp*pp*cp={lay.model_parallel()} does not divide {w.gpus} GPUs"
    for misfit in layout_problems(m, lay.tp, lay.pp):
        return f"{misfit.axis}={misfit.size} does not divide model.{misfit.key}={misfit.value}"
    if lay.vp > 1 and (m.num_layers // lay.pp) % lay.vp:
        return f"vp={lay.vp} does not divide the {m.num_layers // lay.pp} layers of a pipeline stage"
    dp = w.gpus // lay.model_parallel()
    if G % (lay.mbs * dp):
        return f"global batch {G} is not a multiple of micro_batch_size*dp={lay.mbs}*{dp}"
    if lay.cp > 1 and w.seq_length % (2 * lay.cp):
        return f"seq_length {w.seq_length} is not a multiple of 2*cp={2 * lay.cp}"
    return ""


def candidate_layouts(w: Workload) -> Iterator[Layout]:
    """Every layout worth estimating: TP inside a node, sequence parallelism with TP (and Transformer Engine) and the
    distributed optimizer whenever there is more than one data-parallel rank (both cost no compute); CP with TE's
    attention, or without TE megafin's all-gather attention (its memory: estimate.py)."""
    m: ModelConfig = w.cfg.model
    vp = recipe_layout(w.cfg).vp
    for tp in (t for t in (1, 2, 4, 8) if t <= GPUS_PER_NODE):
        for pp in (p for p in range(1, m.num_layers + 1) if m.num_layers % p == 0 and p <= w.gpus):
            for cp in CONTEXT_PARALLEL:
                for mbs in MICRO_BATCHES:
                    for recompute in RECOMPUTE:
                        lay = Layout(tp=tp, pp=pp, cp=cp, vp=vp if pp > 1 else 1, mbs=mbs, recompute=recompute,
                                     distributed_optimizer=True, sequence_parallel=w.te and tp > 1)
                        if not layout_problem(w, lay):
                            yield lay


def rank(estimates: list[Estimate]) -> list[Estimate]:
    """Fitting layouts first; then the highest throughput; then the least memory, the least model parallelism."""
    return sorted(estimates, key=lambda e: (not e.fits, -round(e.tokens_per_s_per_gpu, 6), e.layout.model_parallel(),
                                            e.total_gib))


def overrides(lay: Layout) -> list[str]:
    """The `key=value` overrides that select `lay` (keys this megafin's schema lacks are marked with a *)."""
    out = [f"parallel.tp={lay.tp}", f"parallel.pp={lay.pp}", f"parallel.micro_batch_size={lay.mbs}",
           f"parallel.distributed_optimizer={str(lay.distributed_optimizer).lower()}",
           f"parallel.sequence_parallel={str(lay.sequence_parallel).lower()}"]
    for section, key, value, off in ((ParallelConfig, "cp", lay.cp, 1), (ParallelConfig, "virtual_pp", lay.vp, 1),
                                     (ModelConfig, "recompute", lay.recompute, "none")):
        name = f"{'parallel' if section is ParallelConfig else 'model'}.{key}={value}"
        if schema_has(section, key):
            out.append(name)
        elif value != off:
            out.append(name + "*")
    return out


def plan_layouts(w: Workload) -> list[Estimate]:
    return rank([estimate(w, lay) for lay in candidate_layouts(w)])
