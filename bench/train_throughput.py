"""Training tokens/s: a megafin step vs HF transformers LlamaForCausalLM (SDPA) at the same shape, one run.

Shape (issue 2): ~25M parameters (hidden 512, 8 layers, 8 heads / 4 KV groups, FFN 1408, vocab 512, untied),
seq 512, batch 8, fp32, AdamW, grad clipping 1.0, 2 threads, random tokens. megafin runs as a user runs it
(`python -m megafin.train` on an indexed dataset written here); HF runs a plain training loop in this process.
Both report the median step time after warm-up. The last line is the ratio megafin / HF.

    python bench/train_throughput.py [--steps 12] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHAPE = dict(hidden=512, layers=8, heads=8, kv=4, ffn=1408, vocab=512, seq=512, batch=8)


def write_random_corpus(prefix: Path, tokens: int, vocab: int, seed: int = 0) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    doc = 4096
    for _ in range(tokens // doc):
        builder.add_document(torch.from_numpy(rng.integers(0, vocab - 1, doc).astype(np.int64)), [doc])
    builder.finalize(str(prefix) + ".idx")


def run_megafin(workdir: Path, steps: int, threads: int) -> list[float]:
    from data_prep.tokenizer import train_tokenizer

    s = SHAPE
    tok = train_tokenizer(["megafin throughput benchmark text " * 50], vocab_size=300, out_dir=workdir / "tok")
    write_random_corpus(workdir / "corpus", tokens=(steps + 2) * s["batch"] * (s["seq"] + 1) * 2, vocab=s["vocab"])
    overrides = [
        f"run_dir={workdir / 'run'}", f"data.tokenizer={tok}", f"data.blend=[{{path: {workdir / 'corpus'}, weight: 1}}]",
        f"data.seq_length={s['seq']}", "data.split=100,0,0",
        f"model.hidden_size={s['hidden']}", f"model.num_layers={s['layers']}", f"model.num_attention_heads={s['heads']}",
        f"model.num_query_groups={s['kv']}", f"model.ffn_hidden_size={s['ffn']}", f"model.vocab_size={s['vocab']}",
        "model.max_position_embeddings=512", "model.tie_embeddings=false",
        f"parallel.micro_batch_size={s['batch']}", f"parallel.global_batch_size={s['batch']}",
        f"train.steps={steps}", f"train.threads={threads}", "train.resume=none", "train.eval_interval=0",
        "scheduler.warmup_steps=0", "scheduler.decay=constant", "optimizer.clip_grad=1.0", "optimizer.lr=1e-4",
        "optimizer.min_lr=1e-4", "checkpoint.interval=0", "checkpoint.save_at_end=false", "logging.wandb=false",
        "logging.interval=1000",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "megafin.train", str(REPO / "recipes/tiny/cpt.yaml"), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"megafin run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in records]


def run_hf(steps: int, threads: int) -> tuple[list[float], int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPE
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv"], vocab_size=s["vocab"],
                         max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps):
        ids = torch.randint(0, s["vocab"] - 1, (s["batch"], s["seq"] + 1), generator=gen)
        t0 = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    from megafin.train.flops import flops_per_token, measure_matmul_tflops
    from megafin.config.schema import ModelConfig

    s = SHAPE
    torch.set_num_threads(args.threads)
    peak = measure_matmul_tflops(n=1024)
    with tempfile.TemporaryDirectory() as tmp:
        mf_times = run_megafin(Path(tmp), args.steps, args.threads)
    hf_times, n_params = run_hf(args.steps, args.threads)
    tokens = s["batch"] * s["seq"]
    m = ModelConfig(num_layers=s["layers"], hidden_size=s["hidden"], num_attention_heads=s["heads"],
                    num_query_groups=s["kv"], ffn_hidden_size=s["ffn"])
    fpt = flops_per_token(m, s["vocab"], s["seq"])
    rows = []
    for name, times in (("HF transformers (sdpa)", hf_times), ("megafin (megatron-core)", mf_times)):
        med = statistics.median(times[args.warmup:])
        tps = tokens / med
        rows.append((name, med, tps, tps * fpt / (peak * 1e12)))
    print(f"shape: {n_params / 1e6:.1f}M params, seq {s['seq']}, batch {s['batch']}, fp32, AdamW, "
          f"{args.threads} threads; matmul peak measured now: {peak * 1000:.0f} GFLOP/s")
    print(f"{'engine':<26} {'step s (median)':>16} {'tokens/s':>10} {'MFU':>7}")
    for name, med, tps, mfu in rows:
        print(f"{name:<26} {med:>16.3f} {tps:>10.0f} {mfu:>7.1%}")
    print(f"ratio megafin/HF tokens/s: {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
