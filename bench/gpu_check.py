"""The GPU check's parts, run by bench/gpu_check.sh; prints ONE table (check | result | detail) at the end.

  python bench/gpu_check.py [--parts env,configs,kernels,kernel_tests,nccl,generate,stages,te,width8b,peer]
                            [--work DIR]

Parts (each under its own time limit; a failing part is a FAIL row, the next part still runs):
  env      torch / CUDA / Triton, which of megatron-core, Transformer Engine, apex, flash-attn import, and the
           fusions `model.fusions: auto` resolves to here;
  configs  every `megafin train` run below, its config validated (runs on a CPU too: a bad override shows up in the
           dry run, not after a GPU machine was started);
  kernel_tests  pytest tests/kernels on CUDA (the interpreter's cases, compiled; one config per kernel);
  kernels  megafin's Triton varlen attention and packed log-prob kernels against a float32 reference (max error
           relative to the reference's scale) and against flash-attn / TE / PyTorch SDPA where importable (TFLOP/s);
           SDPA with GQA and a mask (the CP attention's call) through enable_gqa vs megafin's grouped_sdpa;
  nccl     `megafin train` under torchrun with one process: a 1-process NCCL group, TP=1, bf16, the distributed
           optimizer with overlapped grad reduce and param gather, 12 steps of a small model: the loss goes down;
  generate a tiny SFT checkpoint trained here, then `megafin generate` (greedy) on its sample questions with the
           megafin engine on the GPU and on this machine's CPU, with the hf engine on the GPU from its
           `megafin convert to-hf` export, and with the openai engine (the official client) against `megafin serve`
           on 127.0.0.1: the answers must be the same (a child process in the background, beside nccl and stages;
           240 s for the chain, 150 s for each step);
  stages   packed SFT with the Triton varlen attention vs SDPA and RPO with the Triton packed log-probs vs megatron's
           cross entropy (fp32, same data and init): the loss curves agree within 1e-3 relative; and the peer's
           step-1 loss on the GPU equals the same run's on this machine's CPU (same weights: within 1e-4);
  te       Transformer Engine's layer spec, bf16 vs FP8 (delayed scaling), same data and init: losses close.
           Without TE: says so, and the non-TE path (Triton attention, bf16) is what nccl and width8b checked;
  width8b  tokens/s/GPU, MFU and peak allocated memory, the whole step's and forward/backward's (against the two
           sides of `megafin plan`'s estimate) of a Llama-3-8B-width model (hidden 4096, 32 heads / 8 KV groups,
           FFN 14336, vocab 128256) with 2 layers at seq 8192, bf16, fusions auto; `--width8b-runs` adds or drops
           runs (WIDTH8B_VARIANTS: `local`, Megatron-LM's own kernels, is in by default for the peer's same-kernels
           ratio; `fused`, torch's one-kernel AdamW; `off`, every fusion off);
  peer     Megatron-LM's pretrain_gpt.py (a checkout in .megatron-lm/, see MEGATRON_LM below) on the same shape,
           batch and optimizer, mock data: its tokens/s/GPU and peak memory, and megafin's width8b numbers over it,
           with megafin's kernels and with the same kernels as the peer (the `local` run).
Without CUDA (or with GPU_CHECK_DRY_RUN=1) only what runs on a CPU runs: env, configs, nccl as a 3-step gloo run
of the tiny model (the plumbing: data, launcher, metrics, table) and generate on the CPU alone; the rest are
`skipped` rows.

First run, on an H200 (2026-11-27; README "The GPU check" has the table): every row ok once the 8B rows' config
was fixed, but TE's (not installed there); 8B width, 2 layers, seq 8192, bf16: 63,916 tokens/s/GPU, MFU 42.5% with
fusions auto, 62,473 and 41.5% with all off. The configs, kernel_tests, stages and peer parts came after it.
Second session (H200, same day): the peer died on two missing pieces (pydantic, now in the wheelhouse; Megatron-LM's
`make` of the dataset helpers, now a no-op Makefile); the stages part found GPU runs starting from other weights
than the CPU's and than each other (the CPU generator was never seeded on CUDA: megafin/runtime/distributed.py).
Third session (H100, then H200): both fixes held; RPO's megatron path in fp32 drifted from Triton's (megatron-core's
fused cross entropy returns bf16 gradients: now off for fp32 without TE), and the peer ran out of memory beside this
process's cached kernel-part memory (now released after each part); then every row ok, megafin 1.49x Megatron-LM.
Fourth session (H200): generate's first GPU pass, all three rows ok but over its 150 s limit (now a child process,
240 s for the chain, started before nccl); the `local` run had megatron-core's fp32 softmax where the peer runs bf16
(74.65 vs 50.62 GiB): with model.attention_softmax_in_fp32=false, as the peer, 1.06x its tokens/s at 1.00x its peak.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.cuda_timing import time_cuda, time_cuda_with_peak  # noqa: E402  (bench package: after the path is set)

PY = sys.executable
# generate before nccl: its chain (~155 s on an H200 beside the kernel tests' compiling) then overlaps nccl and
# stages instead of holding up the first timed part after them
ALL_PARTS = ("env", "configs", "kernels", "kernel_tests", "generate", "nccl", "stages", "te", "width8b", "peer")
# generate: the whole chain in the background; each of its steps (a training run, a `megafin generate`, the export,
# the server) has GENERATE_STEP_S
LIMITS_S = {"env": 60, "configs": 30, "kernels": 150, "kernel_tests": 240, "nccl": 120, "generate": 240,
            "stages": 150, "te": 150, "width8b": 240, "peer": 150}
GENERATE_STEP_S = 150

ROWS: list[tuple[str, str, str]] = []
ROWS_OUT: Optional[Path] = None  # --rows-out: a background part's child also writes its rows here, one JSON each


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"[gpu_check] {check}: {result}  {detail}", flush=True)
    if ROWS_OUT is not None:
        with ROWS_OUT.open("a") as f:
            f.write(json.dumps([check, result, detail]) + "\n")


def print_table() -> None:
    w0 = max(len(r[0]) for r in ROWS)
    w1 = max(len(r[1]) for r in ROWS)
    line = f"+{'-' * (w0 + 2)}+{'-' * (w1 + 2)}+{'-' * 60}"
    print("\n" + line)
    print(f"| {'check'.ljust(w0)} | {'result'.ljust(w1)} | detail")
    print(line)
    for check, result, detail in ROWS:
        print(f"| {check.ljust(w0)} | {result.ljust(w1)} | {detail}")
    print(line, flush=True)


def importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001 - TE and apex fail to import in many ways without their CUDA builds
        return False


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("GPU_CHECK_DRY_RUN") != "1"


def path_first(folder: Path, **extra: str) -> dict:
    """This process's environment for a child, with `folder` first on PYTHONPATH (the wheelhouse's site after it)."""
    path = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


# ---------------------------------------------------------------------------------------------------------- env
def part_env(args) -> None:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "no CUDA device"
    triton = "not importable"
    try:
        import triton as _triton

        triton = _triton.__version__
    except ImportError:
        pass
    row("device", "info", f"{device}; torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton}")
    libs = {"megatron-core": "megatron.core", "transformer-engine": "transformer_engine.pytorch",
            "apex (fused wgrad)": "fused_weight_gradient_mlp_cuda", "flash-attn": "flash_attn"}
    have = {name: importable(mod) for name, mod in libs.items()}
    row("libraries", "info", "; ".join(f"{k} {'yes' if v else 'no'}" for k, v in have.items()))
    if not have["megatron-core"]:
        row("megatron-core", "FAIL", "not importable: put its cp312 wheel in .whl/ (see bench/gpu_check.sh)")
        return
    from megafin.config.schema import FusionsConfig
    from megafin.models.fusions import resolve_fusions

    settled = resolve_fusions(FusionsConfig(), "bf16")
    row("fusions (auto)", "info", "on: " + (", ".join(k for k, v in settled.items() if v == "on") or "none"))


# ------------------------------------------------------------------------------------------------------ kernels
def part_kernels(args) -> None:
    if not on_gpu():
        row("kernels", "skipped", "no CUDA (the kernels' CPU tests run under TRITON_INTERPRET=1 in tests/kernels)")
        return
    import torch
    import torch.nn.functional as F

    import kernels

    torch.manual_seed(0)
    hq, hkv, d, S = 32, 8, 128, args.seq_length
    lens = torch.tensor([S // 2, S // 4, S // 8, S // 8, S // 4, S // 2, S // 8])
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    cu = cu.cuda()
    T, maxlen = int(cu[-1]), int(lens.max())
    bounds = cu.tolist()
    flops_fwd = 4 * hq * d * float((lens.double() * (lens.double() + 1) / 2).sum())
    q, k, v = (torch.randn(T, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))
    do = torch.randn_like(q)

    def sdpa(q, k, v):
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            o = F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (q, k, v)), is_causal=True,
                                               enable_gqa=hq != hkv)
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    ref = sdpa(*(x.detach().float() for x in (q, k, v)))
    impls = {"triton varlen attention": lambda: kernels.varlen_attention(q, k, v, cu, maxlen),
             "SDPA per document": lambda: sdpa(q, k, v)}
    if importable("flash_attn"):
        from flash_attn import flash_attn_varlen_func

        impls["flash-attn varlen"] = lambda: flash_attn_varlen_func(q, k, v, cu, cu, maxlen, maxlen, causal=True)
    if importable("transformer_engine.pytorch"):
        from transformer_engine.pytorch import DotProductAttention as TEDPA

        te = TEDPA(hq, d, num_gqa_groups=hkv, qkv_format="thd", attn_mask_type="padding_causal").cuda()
        impls["TE thd attention"] = lambda: te(q, k, v, cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=maxlen,
                                               max_seqlen_kv=maxlen).reshape(T, hq, d)
    missing = [n for n, m in (("flash-attn", "flash_attn"), ("TE", "transformer_engine.pytorch")) if not importable(m)]
    scale = ref.abs().max().item()
    for name, fn in impls.items():
        try:
            err = (fn().float() - ref).abs().max().item() / scale
            tf = time_cuda(fn)
            tb = time_cuda(lambda: torch.autograd.grad(fn().reshape(T, hq, d), (q, k, v), do))
            ok = "ok" if err < 2e-2 else "FAIL"
            row(f"attn: {name}", ok, f"bf16 T={T} S<={maxlen} Hq/Hkv/D={hq}/{hkv}/{d}: max err {err:.1e} of scale; "
                f"fwd {flops_fwd / tf / 1e12:.0f} TFLOP/s, fwd+bwd {3.5 * flops_fwd / tb / 1e12:.0f} TFLOP/s")
        except Exception as e:  # noqa: BLE001
            row(f"attn: {name}", "FAIL", f"{type(e).__name__}: {str(e)[:120]}")
    if missing:
        row("attn: peers", "skipped", f"{', '.join(missing)} not installed")

    # packed log-probs: the fused projection + log-softmax never materializes [T, V] logits
    Tl, H, V = 8192, 4096, 128256
    hidden = (torch.randn(Tl, H, device="cuda", dtype=torch.bfloat16)).requires_grad_()
    weight = (torch.randn(V, H, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    labels = torch.randint(0, V, (Tl,), device="cuda")
    with torch.no_grad():
        want = torch.log_softmax((hidden.float() @ weight.float().t()), -1).gather(1, labels[:, None])[:, 0]
    results = {}
    for name, fn in (("triton", lambda: kernels.packed_logprobs(hidden, weight, labels)),
                     ("unfused", lambda: torch.log_softmax((hidden @ weight.t()).float(), -1)
                      .gather(1, labels[:, None])[:, 0])):
        try:
            err = (fn().float() - want).abs().max().item() / want.abs().max().item()
            hidden.grad = weight.grad = None
            results[name] = (err, *time_cuda_with_peak(lambda: fn().sum().backward()))
        except Exception as e:  # noqa: BLE001
            results[name] = e
    tri, unf = results.get("triton"), results.get("unfused")
    if isinstance(tri, tuple):
        extra = f"; unfused: {unf[1] * 1e3:.0f} ms, +{unf[2]:.1f} GiB" if isinstance(unf, tuple) else ""
        row("logprobs: triton packed", "ok" if tri[0] < 2e-2 else "FAIL",
            f"T={Tl} H={H} V={V} bf16 fwd+bwd: max err {tri[0]:.1e}, {tri[1] * 1e3:.0f} ms, +{tri[2]:.1f} GiB{extra}")
    else:
        row("logprobs: triton packed", "FAIL", f"{type(tri).__name__}: {str(tri)[:120]}")
    masked_gqa(args)


def masked_gqa(args) -> None:
    """SDPA with GQA and a mask, as the all-gather context-parallel attention calls it (cp=2: half the queries over the
    whole sequence): enable_gqa (where no fused kernel takes it, the math kernel's fp32 scores) vs the key/value groups
    expanded to every head. The row says which of the two megafin's grouped_sdpa picks on this machine (PyTorch's own
    dispatch checks decide), with the time and memory of each."""
    import torch
    import torch.nn.functional as F

    from megafin.models.grouped_sdpa import expands_groups, grouped_sdpa

    S, hq, hkv, d = args.seq_length, 32, 8, 128
    sq = S // 2
    q = torch.randn(1, hq, sq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, hkv, S, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "kv")
    mask = torch.ones(sq, S, dtype=torch.bool, device="cuda").tril(S - sq)  # the last half's queries, causal
    impls = {"enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
             "expanded": lambda: grouped_sdpa(q, k, v, attn_mask=mask, expand=True)}
    got = {}
    for name, fn in impls.items():
        try:
            got[name] = (fn().float(), *time_cuda_with_peak(lambda: fn().sum().backward()))
        except Exception as e:  # noqa: BLE001
            got[name] = e
    a, b = got["enable_gqa"], got["expanded"]
    if not isinstance(b, tuple):
        row("attn: SDPA, GQA with a mask", "FAIL", f"expanded: {type(b).__name__}: {str(b)[:150]}")
        return
    picks = "expanded" if expands_groups(q, k, v, mask) else "enable_gqa"
    peer = (f"; enable_gqa: {a[1] * 1e3:.0f} ms, +{a[2]:.1f} GiB, max diff {(a[0] - b[0]).abs().max().item():.1e}"
            if isinstance(a, tuple) else f"; enable_gqa: {type(a).__name__}: {str(a)[:80]}")
    row("attn: SDPA, GQA with a mask", "ok", f"bf16 Hq/Hkv/D={hq}/{hkv}/{d}, {sq} queries over {S} keys, fwd+bwd: "
        f"expanded {b[1] * 1e3:.0f} ms, +{b[2]:.1f} GiB{peer}; grouped_sdpa picks {picks} here")


BACKGROUND: dict[str, tuple] = {}  # part name -> (process, finish(process)): correctness parts run beside others
TIMED = {"kernels", "width8b", "peer"}  # parts whose numbers are timings: nothing runs beside them


def part_kernel_tests(args) -> None:
    """tests/kernels on CUDA: the same cases as under the CPU interpreter, compiled (one config per kernel). Started
    in the background (~100 s of mostly compiling on an H200), beside nccl and stages, whose rows are losses; it is
    waited for before the next timed part."""
    if not on_gpu():
        row("kernel tests (CUDA)", "skipped", "no CUDA (they run under TRITON_INTERPRET=1 in `make test`)")
        return
    env = path_first(REPO, MEGAFIN_KERNELS_AUTOTUNE="0")

    def finish(proc) -> None:
        out = (args.work / "kernel_tests.log").read_text()
        lines = [line for line in out.splitlines() if line.strip()]
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        detail = f"pytest tests/kernels: {(lines[-1] if lines else '(no output)').strip('= ')}"
        if proc.returncode != 0:
            # the row has room for the first failure's own lines ("E ..."); the whole report is beside the scratch
            first_e = [line.strip() for line in lines if line.startswith("E ")][:3]
            detail += (f"; {' | '.join(failed[:3])[:200]}; {' | '.join(first_e)[:300]} "
                       f"(log: {args.work / 'kernel_tests.log'})")
        row("kernel tests (CUDA)", "ok" if proc.returncode == 0 else "FAIL", detail)

    start_background("kernel_tests", [PY, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider"],
                     args.work / "kernel_tests.log", env, finish)


def start_background(name: str, cmd: list[str], log: Path, env: dict, finish) -> None:
    """A part as a child process in its own session (so a part over its limit is killed with its children, and
    nothing of it runs on beside a timed part); finish(proc) writes its rows once it has ended."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    BACKGROUND[name] = (proc, finish, time.perf_counter())


def join_background(work: Path) -> None:
    """Wait for the background parts (each within its own limit from its start) and write their rows; one over its
    limit is killed, a FAIL row says so, and its finish still reports what it had done."""
    import signal

    for name, (proc, finish, started) in list(BACKGROUND.items()):
        try:
            proc.wait(timeout=max(1.0, LIMITS_S[name] - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            row(name, "FAIL", f"over its {LIMITS_S[name]} s limit (log in the scratch folder {work})")
        finish(proc)
        del BACKGROUND[name]


# ---------------------------------------------------------------------------------------------------- generate
GENERATE_QUESTIONS = 16  # the sample SFT set's first questions
# fp32, and enough steps that greedy decoding does not hang on the near-ties of an untrained model's logits
GEN_SFT_OVERRIDES = ["precision.dtype=fp32", "train.steps=40", "checkpoint.save_at_end=true"]


def part_generate(args) -> None:
    """See the module docstring; started in the background (its rows are answers, not timings) as this script's
    `generate_chain` part in a child process, whose rows come back through --rows-out. On a CPU (the dry run) the
    same chain runs in line, both "devices" the CPU: the commands, the export and the answers' plumbing."""
    tiny_data(args.work)  # here, not in the child: the parts after this one share it
    if not on_gpu():
        generate_rows(args)
        return
    rows_file = args.work / "generate_rows.jsonl"
    rows_file.unlink(missing_ok=True)

    def finish(proc) -> None:
        done = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        for check, result, detail in done:
            row(check, result, detail)
        # its exit status counts its FAIL rows; killed over its limit (negative), join_background's row says so
        if proc.returncode >= 0 and proc.returncode != sum(r[1] == "FAIL" for r in done):
            row("generate", "FAIL", f"exit {proc.returncode} after {len(done)} of 3 rows "
                                    f"(log: {args.work / 'generate.log'})")

    start_background("generate", [PY, str(Path(__file__).resolve()), "--parts", "generate_chain", "--work",
                                  str(args.work), "--rows-out", str(rows_file)],
                     args.work / "generate.log", path_first(REPO), finish)


def write_questions(work: Path) -> Path:
    """The sample SFT set's first prompts as chat turns, in `megafin generate`'s input format (its three schemas:
    query/answer, prompt/response, messages ending with the assistant's turn, which is left out)."""
    from megafin.demo import SAMPLES

    questions = work / "generate" / "questions.jsonl"
    questions.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for i, r in enumerate(json.loads(line) for line in (SAMPLES / "sft_sample.jsonl").read_text().splitlines()):
        turns = r.get("messages") or [{"role": "user", "content": r.get("query") or r.get("prompt")}]
        out.append({"id": i, "messages": turns[:-1] if turns[-1]["role"] == "assistant" else turns})
    questions.write_text("".join(json.dumps(q) + "\n" for q in out[:GENERATE_QUESTIONS]))
    return questions


def megafin_generate(questions: Path, model: Path | str, name: str, engine: str, env_extra: dict | None = None,
                     extra: tuple[str, ...] = ()) -> list[str]:
    """`megafin generate` of write_questions' prompts (greedy, 32 new tokens); the answers in order."""
    out = questions.parent / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [PY, "-m", "megafin", "generate", "--model", str(model), "--engine", engine, "--input", str(questions),
           "--output", str(out), "--max-new-tokens", "32", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env={**path_first(REPO), **(env_extra or {})}, capture_output=True,
                          text=True, timeout=GENERATE_STEP_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}: {child_error(proc.stderr)[-250:]}")
    answers = {r["id"]: r["samples"][0]["text"] for r in map(json.loads, out.read_text().splitlines())}
    return [answers[i] for i in sorted(answers)]


def same_answers(a: list[str], b: list[str]) -> tuple[int, str]:
    """How many answers agree, and where the first disagreeing pair parts (for the row)."""
    same = sum(x == y for x, y in zip(a, b))
    first = next(((x, y) for x, y in zip(a, b) if x != y), None)
    if first is None:
        return same, ""
    k = next((i for i, (c, d) in enumerate(zip(*first)) if c != d), min(map(len, first)))
    return same, f"; first difference after {k} characters: {first[0][k:k + 20]!r} vs {first[1][k:k + 20]!r}"


def generate_rows(args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from megafin.checkpoint.manager import latest_checkpoint

    train(args.work, "gen_sft", GEN_SFT_OVERRIDES, GENERATE_STEP_S, "sft", False)
    ckpt = latest_checkpoint(args.work / "runs" / "gen_sft")
    if ckpt is None:
        raise RuntimeError("the tiny SFT run saved no checkpoint")
    questions = write_questions(args.work)
    hf_dir = args.work / "generate" / "hf"
    convert = [PY, "-m", "megafin", "convert", "to-hf", "--ckpt", str(ckpt), "--out", str(hf_dir), "--dtype", "fp32",
               "--force"]
    with ThreadPoolExecutor(3) as pool:
        gpu = pool.submit(megafin_generate, questions, ckpt, "megafin_gpu", "megafin")
        cpu = pool.submit(megafin_generate, questions, ckpt, "megafin_cpu", "megafin", {"CUDA_VISIBLE_DEVICES": ""})
        conv = pool.submit(subprocess.run, convert, cwd=REPO, env=path_first(REPO), capture_output=True, text=True,
                           timeout=GENERATE_STEP_S)
        gpu, cpu, conv = gpu.result(), cpu.result(), conv.result()
    n, device = len(gpu), "GPU" if on_gpu() else "CPU"
    dry = "" if on_gpu() else " (dry run: CPU twice)"
    same, where = same_answers(gpu, cpu)
    row(f"generate: megafin engine, GPU vs CPU{dry}", "ok" if same == n else "FAIL",
        f"greedy, fp32 checkpoint, {n} sample questions, 32 new tokens: {same}/{n} answers identical{where}")
    if conv.returncode != 0:
        row(f"generate: hf engine on the HF export{dry}", "FAIL", f"convert to-hf exit {conv.returncode}: "
            f"{child_error(conv.stderr)[-250:]}")
        return
    with ThreadPoolExecutor(2) as pool:
        hf = pool.submit(megafin_generate, questions, hf_dir, "hf_gpu", "hf")
        served = pool.submit(served_answers, questions, ckpt)
        hf, (served, serve_error) = hf.result(), served.result()
    same, where = same_answers(gpu, hf)
    row(f"generate: hf engine on the HF export{dry}", "ok" if same == n else "FAIL",
        f"transformers on the {device}, from `megafin convert to-hf`: {same}/{n} answers identical to the megafin "
        f"engine's{where}")
    label = f"serve: `megafin serve` + the openai client{dry}"
    if serve_error:
        row(label, "FAIL", serve_error)
        return
    same, where = same_answers(gpu, served)
    row(label, "ok" if same == n else "FAIL", f"HTTP on 127.0.0.1, the megafin engine on the {device}, `megafin "
        f"generate --engine openai`: {same}/{n} answers identical to `megafin generate`'s{where}")


def served_answers(questions: Path, ckpt: Path) -> tuple[list[str], str]:
    """`megafin serve CKPT` on a free port of 127.0.0.1 (the pipeline's own `served`, which starts a judge so) and
    `megafin generate --engine openai` (the official openai client) against it: (answers, "") or ([], what failed)."""
    from megafin.pipeline.kinds.distill import served

    name = "megafin-gpu-check"
    try:
        with served(str(ckpt), ["--served-model-name", name], log=lambda message: None,
                    timeout=GENERATE_STEP_S) as url:
            return megafin_generate(questions, name, "served", "openai", extra=("--base-url", url)), ""
    except RuntimeError as e:
        return [], str(e)[-300:]


# ---------------------------------------------------------------------------------------------------- training
def tiny_data(work: Path) -> Path:
    """`make demo`'s data: a tokenizer, the two sample corpora as indexed datasets, packed SFT and preference sets."""
    from megafin.demo import prepare_data

    out = work / "data"
    if (out / "preference_stats.json").is_file():
        return out
    return prepare_data(out)


RECIPES = {stage: REPO / f"recipes/tiny/{stage}.yaml" for stage in ("cpt", "sft", "dpo")}


def base_overrides(recipe: str, data: Path, run_dir: Path) -> list[str]:
    blend = {"cpt": f"[{{path: {data / 'finance_text_document'}, weight: 0.7}}, "
                    f"{{path: {data / 'general_text_document'}, weight: 0.3}}]",
             "sft": f"[{{path: {data / 'sft'}, weight: 1.0}}]",
             "dpo": f"[{{path: {data / 'preference'}, weight: 1.0}}]"}[recipe]
    return [f"run_dir={run_dir}", f"data.tokenizer={data / 'tokenizer'}", f"data.blend={blend}",
            "logging.wandb=false", "logging.interval=1", "train.eval_interval=0", "checkpoint.interval=0",
            "checkpoint.save_at_end=false", "train.resume=none", "scheduler.warmup_steps=2"]


def nccl_overrides(gpu: bool) -> list[str]:
    steps = 12 if gpu else 3
    return [f"train.steps={steps}", *(["precision.dtype=bf16", "parallel.distributed_optimizer=true",
                                         "parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true"]
                                        if gpu else ["train.threads=2"])]


def te_overrides(dtype: str) -> list[str]:
    return ["model.hidden_size=1024", "model.num_attention_heads=16", "model.num_query_groups=8",
            "model.ffn_hidden_size=2816", "data.seq_length=512", "model.max_position_embeddings=512",
            "model.attention_backend=te", "train.steps=20", f"precision.dtype={dtype}"]


# width8b's runs: name -> (row label, overrides beyond the shape). `local`: the kernels Megatron-LM's peer run has
# without TE (megatron's own core attention, which materializes the scores, and its fused cross entropy), so the
# peer's second ratio compares the frameworks, not the kernels. `fused`: megatron-core builds torch's AdamW where
# neither TE nor apex is there, and its CUDA default (foreach) allocates a temporary the size of the fp32 states at
# every step (5.5 GiB here, the second GPU session's peak); optimizer.torch_adamw=fused is the one-kernel step.
WIDTH8B_VARIANTS = {"auto": ("fusions auto", []), "off": ("fusions off", ["model.fusions.all=off"]),
                    # as the peer runs them: its trainer's softmax is in bf16 unless --attention-softmax-in-fp32
                    "local": ("Megatron-LM's kernels", ["model.attention_backend=local",
                                                         "model.logprob_backend=megatron",
                                                         "model.attention_softmax_in_fp32=false"]),
                    "fused": ("fusions auto, torch AdamW fused", ["optimizer.torch_adamw=fused"])}


def width8b_overrides(seq_length: int, layers: int, variant: str) -> list[str]:
    S = seq_length
    return ["model.hidden_size=4096", "model.num_attention_heads=32", "model.num_query_groups=8",
            "model.ffn_hidden_size=14336", "model.vocab_size=128256", f"model.num_layers={layers}",
            f"data.seq_length={S}", f"model.max_position_embeddings={S}", "precision.dtype=bf16",
            "parallel.micro_batch_size=1", "parallel.global_batch_size=4", "train.steps=8",
            # the tiny recipe's min_lr (2e-4) is above this lr: the schedule must stay inside [min_lr, lr]
            "optimizer.lr=1e-4", "optimizer.min_lr=1e-5", "parallel.distributed_optimizer=true",
            *WIDTH8B_VARIANTS[variant][1]]


# The stages part: the same packed run with the Triton path and with its peer, fp32 (IEEE dots in the kernels, no
# TF32 in torch's matmuls), so the two loss curves must agree closely.
STAGE_PAIRS = {"sft": ("model.attention_backend", ("triton", "sdpa"), 10),
               "dpo": ("model.logprob_backend", ("triton", "megatron"), 8)}


def stage_overrides(recipe: str, backend: str) -> list[str]:
    key, _, steps = STAGE_PAIRS[recipe]
    return ["precision.dtype=fp32", f"{key}={backend}", f"train.steps={steps}"]


def all_runs(args) -> dict[str, tuple[str, list[str]]]:
    """Every `megafin train` run the parts make on a GPU, by name -> (recipe, overrides): the `configs` part validates
    each on any machine, so a bad override shows up in the dry run rather than after a GPU machine was started."""
    return {"nccl": ("cpt", nccl_overrides(True)), "nccl_dry": ("cpt", nccl_overrides(False)),
            **{f"te_{d}": ("cpt", te_overrides(d)) for d in ("bf16", "fp8")},
            **{f"w8b_{v}": ("cpt", width8b_overrides(args.seq_length, args.layers, v)) for v in WIDTH8B_VARIANTS},
            **{f"{recipe}_{b}": (recipe, stage_overrides(recipe, b))
               for recipe, (_, backends, _) in STAGE_PAIRS.items() for b in backends},
            "gen_sft": ("sft", GEN_SFT_OVERRIDES)}


def gpu_kind() -> str:
    """megafin plan's --gpu for this machine's GPU (h100 where there is none: the dry run)."""
    import torch

    name = torch.cuda.get_device_name().lower() if on_gpu() else ""
    return next((k for k in ("h200", "h100", "a100") if k in name), "h100")


PLANS: dict[str, dict] = {}  # planned() per run name: the configs part and the width8b rows ask for the same one


def planned(args, name: str) -> dict:
    """`megafin plan`'s estimate for run `name`'s own layout on one GPU of this kind, without TE (as here)."""
    if name in PLANS:
        return PLANS[name]
    recipe, overrides = all_runs(args)[name]
    cmd = [PY, "-m", "megafin", "plan", str(RECIPES[recipe]),
           *base_overrides(recipe, args.work / "data", args.work / "runs" / name), *overrides,
           "--gpus", "1", "--gpu", gpu_kind(), "--no-te", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"megafin plan exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
    PLANS[name] = json.loads(proc.stdout)["recipe_layout"]
    return PLANS[name]


def child_error(output: str) -> str:
    """The failed run's own last words, not torchrun's summary after them: megafin's one-line errors if any, else
    the last lines before torchrun's report."""
    lines = [line for line in output.splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith("megafin:")]
    if mine:
        return " | ".join(mine[-3:])
    cut = next((i for i, line in enumerate(lines) if "failed (exitcode:" in line or "ChildFailedError" in line),
               len(lines))
    # a logged error or an exception line beats the warnings a dying process prints after it
    # (torchrun prefixes a rank's traceback lines with `[rank0]: `)
    errors = [line for line in lines[:cut]
              if re.match(r"(\[rank\d+\]:\s*)?(ERROR\b|[\w.]*(Error|Exception)\b|make: \*\*\*)", line)]
    return " | ".join(errors[-2:] if errors else lines[max(0, cut - 3):cut])


def train(work: Path, name: str, overrides: list[str], limit_s: float, recipe: str = "cpt",
          torchrun: bool = True, env_extra: dict | None = None) -> tuple[list[dict], str]:
    """`megafin train` under torchrun with one process (NCCL on a GPU, gloo on a CPU), or as one plain process
    (what `megafin train` does without a launcher, a few seconds less); (train records, output)."""
    data = tiny_data(work)
    run_dir = work / "runs" / name
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] if torchrun else []
    cmd = [PY, *launcher, "-m", "megafin.train", str(RECIPES[recipe]), *base_overrides(recipe, data, run_dir),
           *overrides]
    env = {**path_first(REPO), **(env_extra or {})}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as e:
        # what it printed before the limit is the only clue to where the time went: keep it, name it in the row
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "output.log").write_text(out)
        last = [ln for ln in out.splitlines() if ln.strip() and "warn" not in ln.lower()][-1:] or ["(no output)"]
        steps = len((run_dir / "metrics.jsonl").read_text().splitlines()) if (run_dir / "metrics.jsonl").exists() else 0
        raise RuntimeError(f"{name}: over its {limit_s:.0f} s limit after {steps} metric records; last line: "
                           f"{last[0][-160:]} (log: {run_dir / 'output.log'})") from None
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        # the whole log beside the run, the child's own error in the row
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "output.log").write_text(out)
        print(f"[gpu_check] {name} failed; its last output lines:\n" + "\n".join(proc.stderr.splitlines()[-40:]),
              flush=True)
        raise RuntimeError(f"exit {proc.returncode}: {child_error(proc.stderr)[-300:]}")
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in records if "loss" in r and "tokens_per_s" in r], out


def fusions_line(output: str) -> str:
    for line in output.splitlines():
        if "fusions " in line and "parameters on this rank" in line:
            return line.split("fusions ", 1)[1].split(";", 1)[0]
    return "?"


def part_configs(args) -> None:
    """Each run's config, validated as `megafin train` would before it starts (files and devices left to the run)."""
    from megafin.config.errors import ConfigError
    from megafin.config.load import load_config
    from megafin.config.validate import validate

    bad = []
    runs = all_runs(args)
    for name, (recipe, overrides) in runs.items():
        try:
            cfg = load_config(RECIPES[recipe], [*base_overrides(recipe, args.work / "data", args.work / "runs" / name),
                                                *overrides])
            validate(cfg, world_size=1, on_this_machine=False)
        except ConfigError as e:
            bad.append(f"{name}: {str(e).splitlines()[0]}")
    row("run configs", "FAIL" if bad else "ok", "; ".join(bad) if bad else f"{len(runs)} valid: {', '.join(runs)}")
    check_megatron_lm_args(args)
    try:
        est = planned(args, "w8b_auto")
    except Exception as e:  # noqa: BLE001 - the plan is a row of its own; the configs row above stands
        row(f"plan: 8B width, {args.layers} layers", "FAIL", f"{type(e).__name__}: {str(e)[:200]}")
        return
    row(f"plan: 8B width, {args.layers} layers", "info",
        f"megafin plan, 1 {gpu_kind()}, no TE: {est['total_gib']:.1f} GiB per GPU (weights {est['weights_gib']:.1f}, "
        f"grads {est['gradients_gib']:.1f}, optimizer {est['optimizer_gib']:.1f}, activations "
        f"{est['activations_gib']:.1f}, logits {est['logits_gib']:.1f}; or at the optimizer step, torch's AdamW "
        f"temporary {est['optimizer_step_gib']:.1f}); the width8b rows measure the peak")


def part_nccl(args) -> None:
    gpu = on_gpu()
    steps = 12 if gpu else 3
    recs, out = train(args.work, "nccl", nccl_overrides(gpu), LIMITS_S["nccl"])
    first, last = recs[0]["loss"], recs[-1]["loss"]
    name = "NCCL TP=1 train step" if gpu else "gloo train step (dry run)"
    detail = (f"{steps} steps {'bf16 distopt+overlap' if gpu else 'fp32 CPU'}: loss {first:.3f} -> {last:.3f}; "
              f"fusions {fusions_line(out)}")
    row(name, "ok" if last < first else "FAIL", detail)


def part_stages(args) -> None:
    """Packed SFT with the Triton varlen attention vs SDPA, and RPO with the Triton packed log-probs vs megatron's:
    the kernels as the layer spec and the loss wire them into training, same data and init, fp32. And each peer once
    more on this machine's CPU: step 1 (before any update) is the same weights on the same data, so the GPU's first
    loss must be the CPU's (the second GPU session found every GPU run starting from other weights than the CPU's and
    than each other's). The six runs go at once: their rows are losses, not timings."""
    from concurrent.futures import ThreadPoolExecutor

    if not on_gpu():
        row("stages: triton vs peer", "skipped", "no CUDA (the configs part validated these runs)")
        return
    tiny_data(args.work)  # once, before the runs that share it start
    runs = {}
    for recipe, (_, backends, _) in STAGE_PAIRS.items():
        for b in backends:
            # one kernel config: this part checks numbers, not speed, and autotuning every config of every kernel in
            # fp32 took the whole first GPU run's limit before the first step
            runs[f"{recipe}_{b}"] = (recipe, stage_overrides(recipe, b), {"MEGAFIN_KERNELS_AUTOTUNE": "0"})
        runs[f"{recipe}_{backends[1]}_cpu"] = (recipe, [*stage_overrides(recipe, backends[1]), "train.steps=2"],
                                               {"CUDA_VISIBLE_DEVICES": ""})
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(train, args.work, name, overrides, LIMITS_S["stages"], recipe, False, env)
                   for name, (recipe, overrides, env) in runs.items()}

    def losses(name: str) -> list[float]:
        return [r["loss"] for r in futures[name].result()[0]]

    for recipe, (key, backends, steps) in STAGE_PAIRS.items():
        what = "packed SFT" if recipe == "sft" else "RPO"
        label = f"{what}: {key.split('.')[1]} {' vs '.join(backends)}"
        try:
            a, b = (losses(f"{recipe}_{x}") for x in backends)
            worst = max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b))
            ok = len(a) == len(b) == steps and worst < 1e-3 and all(map(math.isfinite, a))
            row(label, "ok" if ok else "FAIL", f"{steps} steps fp32: {backends[0]} {a[0]:.4f} -> {a[-1]:.4f}, "
                f"{backends[1]} {b[0]:.4f} -> {b[-1]:.4f}; max rel diff {worst:.1e} (limit 1e-3)")
        except Exception as e:  # noqa: BLE001
            row(label, "FAIL", f"{type(e).__name__}: {str(e)[:200]}")
        cpu_label = f"{what}: step 1 on GPU vs CPU"
        try:
            gpu, cpu = losses(f"{recipe}_{backends[1]}")[0], losses(f"{recipe}_{backends[1]}_cpu")[0]
            diff = abs(gpu - cpu) / abs(cpu)
            row(cpu_label, "ok" if diff < 1e-4 else "FAIL",
                f"{backends[1]}, fp32: GPU {gpu:.6f}, CPU {cpu:.6f}; rel diff {diff:.1e} (limit 1e-4)")
        except Exception as e:  # noqa: BLE001
            row(cpu_label, "FAIL", f"{type(e).__name__}: {str(e)[:200]}")


def part_te(args) -> None:
    if not on_gpu():
        row("TE spec: fp8 vs bf16", "skipped", "no CUDA")
        return
    if not importable("transformer_engine.pytorch"):
        row("TE spec: fp8 vs bf16", "skipped", "Transformer Engine not installed: the non-TE path (Triton attention, "
            "bf16, NCCL) is what the other rows check")
        return
    curves = {}
    for dtype in ("bf16", "fp8"):
        recs, _ = train(args.work, f"te_{dtype}", te_overrides(dtype), LIMITS_S["te"] / 2)
        curves[dtype] = [r["loss"] for r in recs]
    worst = max(abs(a - b) / abs(a) for a, b in zip(curves["bf16"], curves["fp8"]))
    row("TE spec: fp8 vs bf16", "ok" if worst < 0.05 and curves["fp8"][-1] < curves["fp8"][0] else "FAIL",
        f"20 steps: bf16 {curves['bf16'][0]:.3f} -> {curves['bf16'][-1]:.3f}, fp8 {curves['fp8'][0]:.3f} -> "
        f"{curves['fp8'][-1]:.3f}; max rel diff {worst:.3f}")


MEASURED: dict[str, float] = {}  # w8b_<run> and w8b_<run>_peak_gib: tokens/s/GPU and peak GiB, for the peer's ratios


def part_width8b(args) -> None:
    if not on_gpu():
        row("Llama-3-8B width", "skipped", "no CUDA")
        return
    S = args.seq_length
    for variant in args.width8b_runs.split(","):
        label = WIDTH8B_VARIANTS[variant][0]
        try:
            recs, out = train(args.work, f"w8b_{variant}", width8b_overrides(S, args.layers, variant),
                              LIMITS_S["width8b"] / 2)
            steady = recs[3:] or recs
            tps = statistics.median(r["tokens_per_s"] for r in steady)
            mfu = statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None
            peak = max((r.get("mem_max_alloc_gib") or 0.0) for r in recs)
            fwd_bwd = max((r.get("mem_fwd_bwd_peak_gib") or 0.0) for r in recs)
            est = planned(args, f"w8b_{variant}")
            est_fwd_bwd = sum(est[k] for k in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib",
                                               "logits_gib"))
            MEASURED[f"w8b_{variant}"], MEASURED[f"w8b_{variant}_peak_gib"] = tps, peak
            row(f"8B width, {args.layers} layers, {label}", "ok",
                f"seq {S}, 4x{S} tokens/step: {tps:,.0f} tokens/s/GPU, MFU "
                f"{f'{100 * mfu:.1f}%' if mfu is not None else '?'} (median of steps 4-8); peak allocated "
                f"{peak:.2f} GiB (forward/backward {fwd_bwd:.2f}), megafin plan {est['total_gib']:.2f} GiB "
                f"(forward/backward {est_fwd_bwd:.2f}); fusions {fusions_line(out)}")
        except Exception as e:  # noqa: BLE001
            row(f"8B width, {args.layers} layers, {label}", "FAIL", f"{type(e).__name__}: {str(e)[:200]}")


# ------------------------------------------------------------------------------------------------------- peer
# Megatron-LM's own trainer on the width8b shape: the files of the tag matching the megatron-core wheel that the
# wheel lacks (pretrain_gpt.py, gpt_builders.py, model_provider.py, megatron/ but megatron/core: 1.8 MB), in an
# ignored folder that travels with the checkout; megatron.core (with its compiled dataset helpers) comes from the
# wheel, both halves being one namespace package. Fill it from a Megatron-LM clone:
#   mkdir .megatron-lm && git -C MEGATRON_LM archive core_v0.16.1 pretrain_gpt.py gpt_builders.py \
#       model_provider.py megatron | tar -x -C .megatron-lm && rm -r .megatron-lm/megatron/core
MEGATRON_LM = Path(os.environ.get("GPU_CHECK_MEGATRON_LM", REPO / ".megatron-lm"))


def megatron_lm_args(seq_length: int, layers: int) -> list[str]:
    """pretrain_gpt.py's flags for width8b's model and schedule: no TE, so `--transformer-impl local` and the
    fusions that need TE or apex off; its own fused cross entropy on (megafin's loss there is the Triton packed
    log-probs, which never hold the fp32 [T, V] logits either); mock data of the same length."""
    S = seq_length
    return ("--num-layers {L} --hidden-size 4096 --num-attention-heads 32 --group-query-attention "
            "--num-query-groups 8 --ffn-hidden-size 14336 --seq-length {S} --max-position-embeddings {S} "
            "--position-embedding-type rope --rotary-base 500000 --swiglu --normalization RMSNorm "
            "--untie-embeddings-and-output-weights --disable-bias-linear --attention-dropout 0.0 --hidden-dropout 0.0 "
            "--micro-batch-size 1 --global-batch-size 4 --train-iters 8 --lr 1e-4 --min-lr 1e-5 "
            "--lr-decay-style cosine --lr-warmup-iters 2 --weight-decay 0.1 --clip-grad 1.0 --adam-beta1 0.9 "
            "--adam-beta2 0.95 --bf16 --use-distributed-optimizer --transformer-impl local "
            "--no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-rope-fusion --no-persist-layer-norm "
            "--cross-entropy-loss-fusion --cross-entropy-fusion-impl native "
            "--mock-data --tokenizer-type NullTokenizer --vocab-size 128256 --split 100,0,0 --log-interval 1 "
            "--log-throughput --eval-iters 0 --eval-interval 1000 --seed 1234").format(L=layers, S=S).split()


def megatron_lm_env() -> dict:
    # megatron.training from the checkout, megatron.core from the installed wheel (one namespace package)
    return path_first(MEGATRON_LM, CUDA_DEVICE_MAX_CONNECTIONS="1")


def prebuilt_helpers_makefile() -> None:
    """Megatron-LM's start-up runs `make` in megatron/core/datasets to build the dataset index helpers, and exits
    when that fails. The wheel ships them built (helpers_cpp*.so) but no Makefile (the first peer run died so)."""
    proc = subprocess.run([PY, "-c", "import megatron.core.datasets as d, os; print(os.path.dirname(d.__file__))"],
                          env=megatron_lm_env(), capture_output=True, text=True, timeout=120)
    if proc.returncode == 0 and proc.stdout.strip():
        noop_makefile_beside_built_helpers(Path(proc.stdout.strip().splitlines()[-1]))


def noop_makefile_beside_built_helpers(folder: Path) -> bool:
    """A Makefile with nothing to do, only where the built module is and no Makefile is; whether one was written."""
    if (folder / "Makefile").exists() or not list(folder.glob("helpers_cpp*.so")):
        return False
    (folder / "Makefile").write_text("default:\n\t@echo helpers_cpp: built in the megatron-core wheel\n")
    return True


def iteration_ms(log: str) -> list[float]:
    """Megatron-LM's `elapsed time per iteration (ms): X` per logged iteration."""
    return [float(m) for m in re.findall(r"elapsed time per iteration \(ms\): ([\d.]+)", log)]


def peak_allocated_gib(log: str) -> Optional[float]:
    """The largest `max allocated: X` (MB) of Megatron-LM's memory reports (after iterations 1 and 2, once its
    optimizer states exist), in GiB: torch's max_memory_allocated, what megafin's width8b row reports too."""
    found = [float(m) for m in re.findall(r"\| max allocated: ([\d.]+)", log)]
    return max(found) / 1024 if found else None


def check_megatron_lm_args(args) -> None:
    """The peer's flags through Megatron-LM's own parse_args + validate_args (no GPU needed): a row of the configs
    part, so a flag this Megatron-LM refuses shows up in the dry run."""
    label = "peer flags (Megatron-LM)"
    if not (MEGATRON_LM / "pretrain_gpt.py").is_file():
        row(label, "skipped", f"no Megatron-LM checkout at {MEGATRON_LM}")
        return
    code = ("import warnings; warnings.simplefilter('ignore'); "
            "from megatron.training.arguments import parse_args, validate_args; "
            "validate_args(parse_args(), {'tokenizer_type': 'GPT2BPETokenizer'})")
    env = {**megatron_lm_env(), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([PY, "-c", code, *megatron_lm_args(args.seq_length, args.layers)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        row(label, "FAIL", " | ".join(lines[-2:])[-300:])
    else:
        row(label, "ok", "pretrain_gpt.py's flags parse and validate (core_v0.16.1, world size 1)")


def part_peer(args) -> None:
    label = f"peer: Megatron-LM, 8B width, {args.layers} layers"
    if not on_gpu():
        row(label, "skipped", "no CUDA")
        return
    if not (MEGATRON_LM / "pretrain_gpt.py").is_file():
        row(label, "skipped", f"no Megatron-LM checkout at {MEGATRON_LM} (bench/gpu_check.py says how to fill it)")
        return
    prebuilt_helpers_makefile()
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           str(MEGATRON_LM / "pretrain_gpt.py"), *megatron_lm_args(args.seq_length, args.layers)]
    proc = subprocess.run(cmd, cwd=args.work, env=megatron_lm_env(), capture_output=True, text=True,
                          timeout=LIMITS_S["peer"])
    times = iteration_ms(proc.stdout + proc.stderr)
    if proc.returncode != 0 or len(times) < 4:
        (args.work / "megatron_lm.log").write_text(proc.stdout + proc.stderr)
        raise RuntimeError(f"exit {proc.returncode}, {len(times)} iterations logged: "
                           f"{child_error(proc.stderr)[-250:]} (log: {args.work / 'megatron_lm.log'})")
    tps = 4 * args.seq_length / (statistics.median(times[3:]) / 1e3)
    peak = peak_allocated_gib(proc.stdout + proc.stderr)
    row(label, "ok", f"pretrain_gpt.py core_v0.16.1, --transformer-impl local (no TE), bf16, distributed optimizer, "
        f"same shape and batch: {tps:,.0f} tokens/s/GPU (median of iterations 4-8)"
        + (f", peak allocated {peak:.2f} GiB" if peak else "") + megafin_over_peer(tps, peak))


def megafin_over_peer(tps: float, peak: Optional[float]) -> str:
    """megafin's width8b runs over the peer: with megafin's kernels (auto) and with the peer's own (local)."""
    said = []
    for variant, what in (("auto", "megafin's kernels"), ("local", "the same kernels")):
        if f"w8b_{variant}" in MEASURED:
            mine = MEASURED[f"w8b_{variant}_peak_gib"]
            said.append(f"{what}: {MEASURED[f'w8b_{variant}'] / tps:.2f}x tokens/s"
                        + (f", {mine / peak:.2f}x peak memory" if peak else ""))
    return "; megafin / Megatron-LM: " + "; ".join(said) if said else " (megafin's width8b rows did not run)"


def release_cuda_cache() -> None:
    """Give the memory an in-process part (kernels) cached back to the GPU: the parts after it run in child
    processes, and on an 80 GB H100 the 26 GiB this process kept made Megatron-LM's peer run die out of memory."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


PARTS = {"env": part_env, "configs": part_configs, "kernels": part_kernels, "kernel_tests": part_kernel_tests,
         "nccl": part_nccl, "generate": part_generate, "stages": part_stages, "te": part_te, "width8b": part_width8b,
         "peer": part_peer,
         "generate_chain": generate_rows}  # part_generate's child: the chain in the foreground


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(ALL_PARTS))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temporary one)")
    ap.add_argument("--seq-length", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width8b-runs", default="auto,local",
                    help=f"width8b's runs, from {', '.join(WIDTH8B_VARIANTS)} (default auto,local)")
    ap.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)  # a background child's rows
    args = ap.parse_args(argv)
    global ROWS_OUT
    ROWS_OUT = args.rows_out
    unknown = [r for r in args.width8b_runs.split(",") if r not in WIDTH8B_VARIANTS]
    if unknown:
        ap.error(f"--width8b-runs: expected names from {', '.join(WIDTH8B_VARIANTS)}, got {', '.join(unknown)}")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.perf_counter()
    for name in args.parts.split(","):
        if name in TIMED:
            join_background(args.work)
        start = time.perf_counter()
        try:
            PARTS[name](args)
        except subprocess.TimeoutExpired:
            row(name, "FAIL", f"over its {LIMITS_S[name]} s limit")
        except Exception as e:  # noqa: BLE001 - a failing part is a row; the next part still runs
            row(name, "FAIL", f"{type(e).__name__}: {str(e)[:300]}")
        release_cuda_cache()
        print(f"[gpu_check] part {name}: {time.perf_counter() - start:.0f} s", flush=True)
    join_background(args.work)
    ROWS_OUT = None  # a child's rows are its parts', not its total
    row("total", "info", f"{time.perf_counter() - t0:.0f} s; scratch {args.work}")
    print_table()
    return sum(r[1] == "FAIL" for r in ROWS)


if __name__ == "__main__":
    sys.exit(min(main(), 100))
