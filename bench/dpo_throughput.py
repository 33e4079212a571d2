"""DPO training throughput, preference pairs per second: megafin vs TRL's DPOTrainer, same model, same pairs.

Pairs: FPB sentiment questions from ../shared/data (chosen = gold label, rejected = a wrong one), rendered with the
same chat template on both sides. Model: the tiny recipes' Llama shape, fp32, AdamW, beta 0.1, CPU, 2 threads.
Both compute the reference model's log-probs at every step (megafin `dpo.reference_logps=online`, TRL's default);
megafin's default (`precompute`: one pass before training, stored with the run) is shown as an extra row.
megafin packs pairs (`data_prep preference`, seq 512), TRL pads each batch to its longest sequence. megafin runs
with whole documents and with `dpo.share_prompt` (each pair's prompt computed once; the same log-probs).
Step times are medians after warm-up. The last line is the ratio megafin (online) / TRL, both ways.

    python bench/dpo_throughput.py [--pairs 512] [--steps 30]
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finance_tasks import (REPO, hf_model, padded_vocab, step_timer, megafin_model_overrides, preference_records,  # noqa: E402
                           require_shared, train_tokenizer, write_jsonl)

WARMUP = 2


def run_megafin(work: Path, tok: Path, prefix: Path, vocab: int, steps: int, packs_per_step: int, mode: str,
                share_prompt: bool = False) -> tuple[float, float]:
    run_dir = work / f"megafin_{mode}_{'shared' if share_prompt else 'whole'}"
    overrides = [*megafin_model_overrides(vocab), f"run_dir={run_dir}", f"data.tokenizer={tok}",
                 f"data.blend=[{{path: {prefix}, weight: 1}}]", "data.seq_length=512", "data.split=100,0,0",
                 "parallel.micro_batch_size=1", f"parallel.global_batch_size={packs_per_step}", f"train.steps={steps}",
                 "train.threads=2", "train.resume=none", "train.eval_interval=0", "scheduler.warmup_steps=0",
                 "scheduler.decay=constant", "optimizer.lr=5e-4", "optimizer.min_lr=5e-4", "dpo.loss=dpo",
                 "dpo.beta=0.1", f"dpo.reference_logps={mode}", "checkpoint.interval=0", "checkpoint.save_at_end=false",
                 "logging.wandb=false", "logging.interval=1000", f"dpo.share_prompt={str(share_prompt).lower()}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "megafin.train", str(REPO / "recipes/tiny/dpo.yaml"), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"megafin failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rec = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][WARMUP:]
    # Mean pairs per step over the median step time, as TRL's side (batch / median): a median shrugs off the
    # multi-second stalls this VM shows now and then, in either trainer.
    pairs_per_s = statistics.mean(r["pairs"] for r in rec) / statistics.median(r["step_time_s"] for r in rec)
    return pairs_per_s, wall


def run_trl(work: Path, tok: Path, rows: list[dict], vocab: int, steps: int, batch: int) -> float:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    times: list[float] = []


    args = DPOConfig(output_dir=str(work / "trl"), beta=0.1, loss_type=["sigmoid"], learning_rate=5e-4,
                     lr_scheduler_type="constant", per_device_train_batch_size=batch, max_steps=steps, max_length=512,
                     report_to=[], use_cpu=True, bf16=False, logging_steps=1000, save_strategy="no",
                     dataloader_num_workers=0, precompute_ref_log_probs=False, seed=0)
    import copy

    policy = hf_model(vocab)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tok), callbacks=[step_timer(times)])
    trainer.train()
    return batch / statistics.median(times[WARMUP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trl-batch", type=int, default=16)
    parser.add_argument("--packs-per-step", type=int, default=4)
    args = parser.parse_args()
    require_shared()
    from data_prep.packed_writer import preference

    rows = preference_records(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = train_tokenizer(rows, work / "tok")
        vocab = padded_vocab(tok)
        src = write_jsonl(rows, work / "pairs.jsonl")
        res = preference([str(src)], str(tok), str(work / "pref"), seq_length=512, quiet=True)
        pairs_per_pack = res.meta["num_pairs"] / res.meta["num_packs"]
        run = lambda mode, shared: run_megafin(work, tok, work / "pref", vocab, args.steps,  # noqa: E731
                                               args.packs_per_step, mode, shared)[0]
        online, online_shared, pre_shared = run("online", False), run("online", True), run("precompute", True)
        trl = run_trl(work, tok, rows, vocab, args.steps, args.trl_batch)
    print(f"DPO, {len(rows)} FPB pairs, tiny Llama shape, fp32, CPU, 2 threads; megafin packs hold "
          f"{pairs_per_pack:.1f} pairs at seq 512 (fill {res.meta.get('fill', 0):.1%})")
    print(f"{'engine':<62} {'pairs/s':>9}")
    print(f"{'TRL DPOTrainer (reference every step)':<62} {trl:>9.1f}")
    print(f"{'megafin dpo (reference every step)':<62} {online:>9.1f}")
    print(f"{'megafin dpo (reference every step, dpo.share_prompt)':<62} {online_shared:>9.1f}")
    print(f"{'megafin dpo (reference precomputed, pass excluded; share_prompt)':<62} {pre_shared:>9.1f}")
    print(f"ratio megafin/TRL pairs/s, both with the reference every step: {online / trl:.2f}x whole documents, "
          f"{online_shared / trl:.2f}x with dpo.share_prompt")


if __name__ == "__main__":
    main()
