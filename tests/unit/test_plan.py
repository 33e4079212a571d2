"""`megafin plan`: its CLI (table, JSON, one-line errors) and the arithmetic behind it."""
from __future__ import annotations

import json

import pytest

from tests.helpers import REPO

RECIPE = str(REPO / "recipes/llama3_8b/cpt_it_group1.yaml")


def _plan(capsys, *argv):
    from megafin.cli import main

    code = main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_and_json(capsys):
    code, out, _ = _plan(capsys, RECIPE, "--gpus", "8", "--gpu", "h100", "--top", "3")
    assert code == 0
    assert "recipe  tp2 pp1" in out and "best: parallel.tp=" in out
    code, out, _ = _plan(capsys, RECIPE, "--gpus", "16", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["recipe_layout"]["fits"] and doc["recipe_layout"]["dp"] == 8
    layouts = doc["layouts"]
    assert layouts and all(e["fits"] for e in layouts)
    speeds = [e["tokens_per_s_per_gpu"] for e in layouts]
    assert speeds == sorted(speeds, reverse=True)  # best first


@pytest.mark.parametrize("argv,line", [
    (["--gpus", "0"], "megafin plan: error: --gpus: expected a positive integer, got '0'"),
    (["--gpus", "8", "--gpu", "v100"], "megafin plan: error: --gpu: expected one of h100, h200, a100, got 'v100'"),
    (["precision.dtype=fp8", "--gpus", "8", "--gpu", "a100"], "megafin plan: error: precision.dtype: fp8 needs"),
    (["--gpus", "8", "--mfu", "1.5"], "megafin plan: error: --mfu: expected a fraction in (0, 1], got '1.5'"),
    (["model.num_query_groups=5", "--gpus", "8"], "megafin plan: config error: model.num_query_groups: expected a "
                                                  "divisor of model.num_attention_heads=32"),
    (["parallel.nope=1", "--gpus", "8"], "megafin plan: config error: parallel.nope: unknown key"),
])
def test_bad_input_is_one_line(capsys, argv, line):
    code, out, err = _plan(capsys, RECIPE, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err


def test_layout_the_gpus_cannot_hold_is_named(capsys):
    code, out, _ = _plan(capsys, RECIPE, "--gpus", "6", "--top", "2")
    assert code == 0 and "recipe layout: cannot run on 6 GPUs: global batch 16 is not a multiple of" in out


def _workload(overrides=(), gpus=8, efficiency=0.4):
    from megafin.config.load import read_config
    from megafin.plan import GPUS, Workload

    cfg = read_config(RECIPE, list(overrides))
    return Workload(cfg=cfg, vocab_size=cfg.model.vocab_size, gpus=gpus, gpu=GPUS["h100"], efficiency=efficiency)


def test_activations_follow_the_derivation():
    """12h + 4k + 6f bytes per token and layer in bf16 (Korthikanti's 34 sbh for a Llama block without dropout):
    sequence parallelism divides all of it by t, TP alone only the 4h + 4k + 6f inside the TP region; full recompute
    keeps the layer's input (2h); fp8 stores the four projection inputs in one byte. Fused attention (te, triton,
    sdpa) adds an fp32 logsumexp per head, megatron's local attention the softmax, its mask and K, V repeated to every
    head; selective recompute drops either. (What megafin keeps on CPU: tests/unit/test_plan_activations.py.)"""
    from megafin.plan import Layout
    from megafin.plan.estimate import activation_bytes_per_layer

    w = _workload()
    s, h, k, f = 8000, 4096, 1024, 14336
    stats = 4 * 32  # fp32 logsumexp per token and head
    assert activation_bytes_per_layer(w, Layout(), "none") == s * (12 * h + 4 * k + 6 * f + stats)
    assert activation_bytes_per_layer(w, Layout(tp=4, sequence_parallel=True), "none") == \
        s * (12 * h + 4 * k + 6 * f + stats) / 4
    assert activation_bytes_per_layer(w, Layout(tp=4), "none") == s * (8 * h + (4 * h + 4 * k + 6 * f + stats) / 4)
    assert activation_bytes_per_layer(w, Layout(), "selective") == s * (12 * h + 4 * k + 6 * f)
    assert activation_bytes_per_layer(w, Layout(), "full") == s * 2 * h
    fp8 = _workload(["precision.dtype=fp8"])
    assert activation_bytes_per_layer(fp8, Layout(), "none") == s * (11 * h + 4 * k + 5 * f + stats)
    sdpa = _workload(["model.attention_backend=sdpa"])  # PyTorch's fused kernels: no s x s scores either
    assert activation_bytes_per_layer(sdpa, Layout(), "none") == activation_bytes_per_layer(w, Layout(), "none")
    # local: K, V on 32 heads; the fp32 softmax and its bf16 cast (4 + 2 bytes a score: no fused kernel past 4096
    # positions, and megatron-core's attention_softmax_in_fp32) and the s x s causal mask
    local = _workload(["model.attention_backend=local"])
    assert activation_bytes_per_layer(local, Layout(), "none") == \
        s * (12 * h + 4 * k + 6 * f + 4 * (h - k)) + (4 + 2) * 32 * s * s + s * s
    local16 = _workload(["model.attention_backend=local", "model.attention_softmax_in_fp32=false"])
    assert activation_bytes_per_layer(local16, Layout(), "none") == \
        s * (12 * h + 4 * k + 6 * f + 4 * (h - k)) + 2 * 32 * s * s + s * s
    assert activation_bytes_per_layer(local, Layout(), "selective") == \
        activation_bytes_per_layer(w, Layout(), "selective")


def test_optimizer_and_pipeline_terms():
    from megafin.plan import Layout, estimate

    w = _workload()
    plain, dist = estimate(w, Layout(tp=2, distributed_optimizer=False)), estimate(w, Layout(tp=2))
    assert plain.optimizer_gib == pytest.approx(4 * dist.optimizer_gib)  # dp = 4
    assert plain.optimizer_gib == pytest.approx(12 / 2 * plain.weights_gib)  # fp32 master + 2 moments vs bf16
    pp = estimate(_workload(gpus=16), Layout(tp=2, pp=4, sequence_parallel=True))
    assert pp.micro_batches == 8 and pp.micro_batches_in_flight == 4 and pp.stage == "first"
    no_bubble = estimate(_workload(gpus=16), Layout(tp=8, sequence_parallel=True))
    assert pp.step_time_s == pytest.approx(no_bubble.step_time_s * (1 + 3 / 8))  # 1F1B bubble (pp-1)/m
    full = estimate(w, Layout(tp=2, recompute="full"))
    assert full.step_time_s > dist.step_time_s * 1.25 and full.activations_gib < dist.activations_gib / 5


def test_torch_adamw_step_temporary_without_fused_adam():
    """Without TE (or apex) megatron-core runs torch's AdamW; its default CUDA kernel (foreach) allocates one fp32
    temporary per element this rank's optimizer steps, after the activations are freed: the peak is the larger."""
    from dataclasses import replace

    from megafin.plan import Layout, estimate

    w = _workload()
    no_te = replace(w, te=False)
    for lay in (Layout(tp=2), Layout(tp=2, distributed_optimizer=False)):
        fused, foreach = estimate(w, lay), estimate(no_te, lay)
        owned = foreach.params_per_gpu / (foreach.dp if lay.distributed_optimizer else 1)
        assert fused.optimizer_step_gib == 0.0
        assert foreach.optimizer_step_gib == pytest.approx(owned * 4 / 2 ** 30)
        state = foreach.weights_gib + foreach.gradients_gib + foreach.optimizer_gib
        assert foreach.total_gib == pytest.approx(state + max(foreach.activations_gib + foreach.logits_gib,
                                                              foreach.optimizer_step_gib))
    fused_kernel = replace(no_te, cfg=_workload(["optimizer.torch_adamw=fused"]).cfg)
    assert estimate(fused_kernel, Layout(tp=2)).optimizer_step_gib == 0.0


def test_torch_foreach_adamw_allocates_one_state_sized_temporary():
    """What the planner's term rests on, counted on CPU (foreach forced; torch picks it by itself on CUDA): a step
    of torch's foreach AdamW allocates one fp32 element per parameter element, the fused kernel none."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class NewElements(TorchDispatchMode):
        """Elements of every tensor an op returns that is not one of its inputs (in-place ops return their input)."""

        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {id(t) for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            self.count += sum(t.numel() for t in torch.utils._pytree.tree_leaves(out)
                              if isinstance(t, torch.Tensor) and id(t) not in seen and t.dim() > 0)
            return out

    sizes = [(300, 70), (1000,), (64, 64, 3)]
    numel = sum(torch.Size(s).numel() for s in sizes)
    counted = {}
    for kernel in ("foreach", "fused"):
        params = [torch.nn.Parameter(torch.randn(s)) for s in sizes]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **{kernel: True})
        for step in range(2):  # the first step also creates the moments; count the second
            for p in params:
                p.grad = torch.randn_like(p)
            if step == 1:
                with NewElements() as mode:
                    opt.step()
                counted[kernel] = mode.count
            else:
                opt.step()
    assert counted["foreach"] == numel and counted["fused"] == 0, counted


@pytest.mark.parametrize("fmt,mbs", [("bshd", 2), ("packed", 2)])
def test_allgather_cp_attention_term_is_what_the_call_keeps(fmt, mbs):
    """Without TE, `megafin plan` ranks context parallelism with megafin's all-gather attention: per layer its SDPA
    call keeps the whole sequence's keys and values expanded to the rank's heads and the dense mask as an additive
    bias. Counted here on CPU as the CP attention calls SDPA (grouped_sdpa with the groups expanded, as on CUDA),
    beyond Q, the output and the logsumexp, against the planner's term."""
    from dataclasses import replace

    import torch

    from megafin.models.grouped_sdpa import grouped_sdpa
    from megafin.plan import Layout
    from megafin.plan.estimate import allgather_cp_attention_bytes

    cp, seq = 2, 64
    cfg = _workload(["model.hidden_size=128", "model.num_attention_heads=8", "model.num_query_groups=2",
                     f"data.seq_length={seq}", "precision.dtype=fp32"]).cfg
    cfg.data.format = fmt
    w = replace(_workload(), cfg=cfg, te=False)
    lay = Layout(tp=1, cp=cp, mbs=mbs)
    heads, groups, d = 8, 2, 16
    # bshd: mbs sequences, one mask; packed: the micro-batch's packs are one sequence of mbs * seq tokens
    batch, keys = (mbs, seq) if fmt == "bshd" else (1, mbs * seq)
    q = torch.randn(batch, heads, keys // cp, d, requires_grad=True)
    k, v = (torch.randn(batch, groups, keys, d, requires_grad=True) for _ in "kv")
    mask = torch.ones(keys // cp, keys, dtype=torch.bool).tril(keys - keys // cp)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = grouped_sdpa(q, k, v, attn_mask=mask, expand=True)
    logsumexp = batch * heads * (keys // cp) * 4
    kept = sum(saved.values()) - q.untyped_storage().nbytes() - out.untyped_storage().nbytes() - logsumexp
    assert kept == allgather_cp_attention_bytes(w, lay)
