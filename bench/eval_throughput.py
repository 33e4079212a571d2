"""Evaluation speed: `megafin eval run` (megafin engine on the converted checkpoint) against lm-evaluation-harness's
`hf` backend running megafin's own task YAML (megafin_fpb) on the HF model, the same FPB examples, greedy, chat
template applied. Each side is timed end to end in this process, once: model load, generation, scoring (megafin also
bootstraps its interval and writes its report). lm-eval's batch size is megafin's (--batch, default 32, the megafin
engine's default max_batch_size), not `auto`, which on CPU picks 64; both stop at the same end tokens (the model's
generation config lists them, as a chat model's release does).

The model: bench/generate_throughput.py's random Llama (a few M parameters, the demo tokenizer, a chat template)
and its from-hf conversion. The data: ../shared/data/fpb/test.jsonl (its first --examples rows). The target
(issue 15) is 2x or more; the last line is the ratio.

    python bench/eval_throughput.py [--examples 128] [--batch 32] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data"


def models(work: Path) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    from generate_throughput import make_models
    from megafin.generate.sampling import stop_token_ids

    hf, ckpt = make_models(work)
    gen = json.loads((hf / "generation_config.json").read_text())
    ends = sorted(stop_token_ids(AutoTokenizer.from_pretrained(str(hf))))
    (hf / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": ends}))
    return hf, ckpt


def run_megafin(ckpt: Path, n: int, batch: int, out: Path) -> tuple[float, dict]:
    from megafin.eval.run import run

    t0 = time.perf_counter()
    results = run(str(ckpt), "fpb", out, data_dir=DATA, engine="megafin", limit=n, batch_size=batch,
                  log=lambda _: None)
    return time.perf_counter() - t0, results["tasks"][0]


def run_lm_eval(hf: Path, n: int, batch: int) -> tuple[float, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from megafin.eval.lm_eval_tasks import include_path

    meta = {"data_dir": str(DATA)}
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf},dtype=float32,device=cpu,add_bos_token=False",
        tasks=["megafin_fpb"], task_manager=TaskManager(include_path=include_path(), metadata=meta), metadata=meta,
        apply_chat_template=True, limit=n, batch_size=batch, bootstrap_iters=0)
    return time.perf_counter() - t0, out["results"]["megafin_fpb"]["accuracy,none"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not (DATA / "fpb" / "test.jsonl").is_file():
        print(f"skipped: {DATA / 'fpb/test.jsonl'} not found (the real data lives in ../shared/data)")
        return 0
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        hf, ckpt = models(work)
        mf_s, entry = run_megafin(ckpt, args.examples, args.batch, work / "out")
        lm_s, lm_score = run_lm_eval(hf, args.examples, args.batch)
    n = args.examples
    print("| runner | examples | seconds | examples/s | accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| megafin eval run (megafin engine, batch {args.batch}) | {n} | {mf_s:.2f} | {n / mf_s:.1f} | "
          f"{entry['score']:.3f} |")
    print(f"| lm-eval hf (batch_size {args.batch}) | {n} | {lm_s:.2f} | {n / lm_s:.1f} | {lm_score:.3f} |")
    print(f"(megafin's generation alone: {entry['generate_s']:.2f} s)")
    print(f"ratio megafin/lm-eval examples/s: {lm_s / mf_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
