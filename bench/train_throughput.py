"""Training tokens/s: a megafin step vs HF transformers LlamaForCausalLM (SDPA) at the same shape, in turn.

Shape (issue 2): ~25M parameters (hidden 512, 8 layers, 8 heads / 4 KV groups, FFN 1408, vocab 512, untied),
seq 512, batch 8, fp32, AdamW, grad clipping 1.0, 2 threads, random tokens. megafin is built as `python -m
megafin.train` builds it (config load + validate, process groups, Trainer on an indexed dataset written here) and
steps through Trainer.train_step, the CLI loop's own step; HF runs a plain training loop with its defaults.
megafin's process-wide CPU setting (train.host_memory=reuse: glibc malloc keeps large blocks on its heap) applies to
HF's steps too, since both share the process; `--megafin train.host_memory=release` runs both without it.

Both live in this one process and step in turn (megafin, HF, HF, megafin, ...): a load that shifts during the run
slows both sides alike, which back-to-back runs of each did not. Each side reports the median step time after
warm-up; the last line is the ratio megafin / HF of tokens/s: the median over rounds of each round's own ratio.
`--cpu-time` times with process_time (CPU seconds of all threads: with --threads 1, the A/B to take on a loaded
machine).

    python bench/train_throughput.py [--steps 12] [--threads 2] [--megafin optimizer.torch_adamw=fused ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

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


def megafin_step(workdir: Path, steps: int, threads: int, extra: list[str]) -> Callable[[], None]:
    """A megafin Trainer built as the CLI builds it; the returned function runs one training step."""
    from data_prep.tokenizer import train_tokenizer
    from megafin.config import load_config, validate
    from megafin.runtime.distributed import detect_launch_env, init_distributed
    from megafin.train.loop import BadStepTracker, Trainer

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
        "logging.interval=1000", *extra,
    ]
    cfg = load_config(str(REPO / "recipes/tiny/cpt.yaml"), overrides)
    validate(cfg, 1)
    launch = detect_launch_env()
    init_distributed(launch, cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed)  # as run_training, then its Trainer
    trainer = Trainer(cfg, launch)
    bad = BadStepTracker(cfg.train.max_bad_steps)
    return lambda: trainer.train_step(bad)


def hf_step() -> tuple[Callable[[], None], int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPE
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv"], vocab_size=s["vocab"],
                         max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        ids = torch.randint(0, s["vocab"] - 1, (s["batch"], s["seq"] + 1), generator=gen)
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per side, warm-up included")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpu-time", action="store_true", help="time with process_time instead of wall time")
    parser.add_argument("--megafin", nargs="*", default=[], metavar="KEY=VALUE",
                        help="megafin config overrides, e.g. optimizer.torch_adamw=fused")
    args = parser.parse_args()
    from megafin.train.flops import flops_per_token, measure_matmul_tflops
    from megafin.config.schema import ModelConfig

    s = SHAPE
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    peak = measure_matmul_tflops(n=1024)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"megafin (megatron-core)": megafin_step(Path(tmp), args.steps, args.threads, args.megafin)}
        sides["HF transformers (sdpa)"], n_params = hf_step()
        times: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for i in range(args.steps):
            for name in order if i % 2 == 0 else order[::-1]:  # ABBA: neither side always runs first
                t0 = clock()
                sides[name]()
                times[name].append(clock() - t0)
    tokens = s["batch"] * s["seq"]
    m = ModelConfig(num_layers=s["layers"], hidden_size=s["hidden"], num_attention_heads=s["heads"],
                    num_query_groups=s["kv"], ffn_hidden_size=s["ffn"])
    fpt = flops_per_token(m, s["vocab"], s["seq"])
    rows = {}
    for name in ("HF transformers (sdpa)", "megafin (megatron-core)"):
        med = statistics.median(times[name][args.warmup:])
        rows[name] = (med, tokens / med, tokens / med * fpt / (peak * 1e12))
    print(f"shape: {n_params / 1e6:.1f}M params, seq {s['seq']}, batch {s['batch']}, fp32, AdamW, "
          f"{args.threads} threads; matmul peak measured now: {peak * 1000:.0f} GFLOP/s; steps alternate, "
          f"{args.steps - args.warmup} timed per side ({'CPU' if args.cpu_time else 'wall'} time); "
          f"megafin overrides: {' '.join(args.megafin) or 'none'}")
    print(f"{'engine':<26} {'step s (median)':>16} {'tokens/s':>10} {'MFU':>7}")
    for name, (med, tps, mfu) in rows.items():
        print(f"{name:<26} {med:>16.3f} {tps:>10.0f} {mfu:>7.1%}")
    # The ratio of each round's two steps (taken back to back), then their median: a load that shifts between
    # rounds moves both steps of a round alike, so it cancels here where it does not in a ratio of two medians.
    paired = statistics.median(h / m for h, m in zip(times["HF transformers (sdpa)"][args.warmup:],
                                                     times["megafin (megatron-core)"][args.warmup:]))
    medians = rows["megafin (megatron-core)"][1] / rows["HF transformers (sdpa)"][1]
    print(f"ratio of the medians: {medians:.2f}x")
    print(f"ratio megafin/HF tokens/s (median of the rounds' ratios): {paired:.2f}x")


if __name__ == "__main__":
    main()
