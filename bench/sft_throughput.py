"""SFT training throughput in useful (non-pad) tokens per second: megafin vs TRL's SFTTrainer without and with
packing, same model, same examples.

Examples: FPB, FiQA-SA and gold-headline instructions from ../shared/data (megafin.eval.tasks.sft_records), as chat
messages rendered with the same chat template on both sides; loss on the responses only. Model: the tiny recipes' Llama
shape, fp32, AdamW, CPU, 2 threads. megafin packs with data_prep (best-fit-decreasing, seq 1024) and attends within
documents (THD); TRL pads each batch to its longest example, or packs (`packing=True`, max_length 1024).
Step times are medians after warm-up. The last line is the ratio megafin / TRL with packing.

    python bench/sft_throughput.py [--examples 2000] [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finance_tasks import (REPO, hf_model, padded_vocab, step_timer, megafin_model_overrides, require_shared, sft_records,  # noqa: E402
                           train_tokenizer, write_jsonl)

WARMUP = 2
SEQ = 1024


def run_megafin(work: Path, tok: Path, prefix: Path, vocab: int, steps: int, packs_per_step: int,
                tokens_per_pack: float) -> float:
    run_dir = work / "megafin"
    overrides = [*megafin_model_overrides(vocab), f"run_dir={run_dir}", f"data.tokenizer={tok}",
                 f"data.blend=[{{path: {prefix}, weight: 1}}]", f"data.seq_length={SEQ}", "data.split=100,0,0",
                 "parallel.micro_batch_size=1", f"parallel.global_batch_size={packs_per_step}", f"train.steps={steps}",
                 "train.threads=2", "train.resume=none", "train.eval_interval=0", "scheduler.warmup_steps=0",
                 "scheduler.decay=constant", "optimizer.lr=5e-4", "optimizer.min_lr=5e-4", "checkpoint.interval=0",
                 "checkpoint.save_at_end=false", "logging.wandb=false", "logging.interval=1000"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "megafin.train", str(REPO / "recipes/tiny/sft.yaml"), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"megafin failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rec = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    return packs_per_step * tokens_per_pack / statistics.median(r["step_time_s"] for r in rec)


def run_trl(work: Path, tok: Path, rows: list[dict], vocab: int, steps: int, batch: int, packing: bool) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    times: list[float] = []
    tokens: list[int] = []


    args = SFTConfig(output_dir=str(work / f"trl_{packing}"), learning_rate=5e-4, lr_scheduler_type="constant",
                     per_device_train_batch_size=batch, max_steps=steps, max_length=SEQ, packing=packing,
                     report_to=[], use_cpu=True, bf16=False, logging_steps=1000, save_strategy="no",
                     dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=hf_model(vocab), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tok), callbacks=[step_timer(times)])
    collate = trainer.data_collator

    def counting_collator(examples: list) -> dict:  # the real (non-pad) tokens of every batch TRL trains on
        tokens.append(sum(len(e["input_ids"]) for e in examples))
        return collate(examples)

    trainer.data_collator = counting_collator
    trainer.train()
    per_step = statistics.median(times[WARMUP:])
    return statistics.mean(tokens[WARMUP:steps]) / per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trl-batch", type=int, default=16)
    parser.add_argument("--packs-per-step", type=int, default=2)
    args = parser.parse_args()
    require_shared()
    from data_prep.packed_writer import sft

    rows = sft_records(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = train_tokenizer(rows, work / "tok")
        vocab = padded_vocab(tok)
        src = write_jsonl(rows, work / "sft.jsonl")
        res = sft([str(src)], str(tok), str(work / "sft"), seq_length=SEQ, quiet=True)
        tokens_per_pack = res.meta["num_tokens"] / res.meta["num_packs"]
        mf = run_megafin(work, tok, work / "sft", vocab, args.steps, args.packs_per_step, tokens_per_pack)
        trl_pad = run_trl(work, tok, rows, vocab, args.steps, args.trl_batch, packing=False)
        trl_pack = run_trl(work, tok, rows, vocab, args.steps, max(1, args.packs_per_step), packing=True)
    print(f"SFT, {len(rows)} FPB/FiQA-SA/headline examples, tiny Llama shape, fp32, CPU, 2 threads; megafin packs "
          f"{tokens_per_pack:.0f} tokens of {SEQ} on average")
    print(f"{'engine':<34} {'useful tokens/s':>16}")
    print(f"{'TRL SFTTrainer, padded batches':<34} {trl_pad:>16.0f}")
    print(f"{'TRL SFTTrainer, packing=True':<34} {trl_pack:>16.0f}")
    print(f"{'megafin sft (packed, THD)':<34} {mf:>16.0f}")
    print(f"ratio megafin/TRL useful tokens/s: {mf / trl_pad:.2f}x vs padded, {mf / trl_pack:.2f}x vs packed")


if __name__ == "__main__":
    main()
