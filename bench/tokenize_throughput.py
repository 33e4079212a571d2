"""Offline tokenization throughput: `data_prep pretrain` vs Megatron-LM's tools/preprocess_data.py vs datasets.map.

Same input, same HF tokenizer, same worker count, one run each, on two corpora built from ../shared/data as in
../shared/notes/stack-on-cpu.md: long documents (cpt/* repeated 4x) and short ones (FPB, headlines, TFNS,
FiQA-SA, NER sentences repeated 64x, `--short-repeat`). Every tool runs as its own process, like a user would run
it. Start-up (imports) is measured separately with a one-document input (the median of `--startup-runs`, default 3)
and reported apart; throughput = docs / (wall time - start-up). Token ids: our .bin is compared with Megatron's .bin
byte for byte and a sample with the HF tokenizer's own `encode`. The last line is the ratio to Megatron-LM's tool
(the slower corpus decides).

    python bench/tokenize_throughput.py --megatron /path/to/Megatron-LM [--workers 2] [--corpus both]
Megatron-LM is never part of this project: pass a checkout (tag core_v0.16.1 matches megatron-core 0.16.1).
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


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

DATASETS_MAP = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import datasets
from transformers import AutoTokenizer
src, tokdir, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
datasets.disable_progress_bars()
tok = AutoTokenizer.from_pretrained(tokdir, local_files_only=True)
ds = datasets.load_dataset("json", data_files=src, split="train", cache_dir=sys.argv[4])
eod = tok.eos_token_id
def f(batch):
    return {"input_ids": [x + [eod] for x in tok(batch["text"])["input_ids"]]}
out = ds.map(f, batched=True, num_proc=workers if workers > 1 else None, remove_columns=ds.column_names)
print("TOKENS", sum(len(x) for x in out["input_ids"]))
"""


def build_corpora(tmp: Path, short_repeat: int) -> dict[str, Path]:
    long_p, short_p = tmp / "long.jsonl", tmp / "short.jsonl"
    cpt = [json.loads(l)["text"] for n in sorted((SHARED / "cpt").glob("*.jsonl")) for l in open(n)]
    with open(long_p, "w") as f:
        for _ in range(4):
            for t in cpt:
                f.write(json.dumps({"text": t}) + "\n")
    short = []
    for rel in ("fpb/train.jsonl", "fpb/test.jsonl", "headline/train.jsonl", "tfns/test.jsonl",
                "fiqa_sa/train.jsonl", "fiqa_sa/test.jsonl"):
        short += [json.loads(l)["text"] for l in open(SHARED / rel)]
    for rel in ("ner/train.jsonl", "ner/test.jsonl"):
        short += [" ".join(json.loads(l)["tokens"]) for l in open(SHARED / rel)]
    with open(short_p, "w") as f:
        for _ in range(short_repeat):
            for t in short:
                f.write(json.dumps({"text": t}) + "\n")
    return {"long": long_p, "short": short_p}


def run(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed:\n{r.stderr[-2000:]}")
    return dt


def tools(megatron: str | None, tokdir: str, workers: int, tmp: Path) -> dict:
    py = sys.executable
    env_ours = dict(os.environ, PYTHONPATH=str(REPO))
    t = {
        "data_prep": (lambda src, out: [py, "-m", "data_prep", "pretrain", "--input", str(src), "--tokenizer", tokdir,
                                        "--output-prefix", str(out), "--workers", str(workers), "--quiet"], env_ours),
        "datasets.map": (lambda src, out: [py, "-c", DATASETS_MAP, str(src), tokdir, str(workers),
                                           str(tmp / f"hfcache_{out.name}")], None),
    }
    if megatron:
        env_m = dict(os.environ, PYTHONPATH=megatron)
        t["megatron_lm"] = (lambda src, out: [py, os.path.join(megatron, "tools", "preprocess_data.py"), "--input", str(src),
                                              "--output-prefix", str(out), "--tokenizer-type", "HuggingFaceTokenizer",
                                              "--tokenizer-model", tokdir, "--workers", str(workers), "--append-eod",
                                              "--json-keys", "text"], env_m)
    return t


def megatron_usable(path: str | None) -> str | None:
    if not path:
        return "no --megatron checkout given"
    if not os.path.isfile(os.path.join(path, "tools", "preprocess_data.py")):
        return f"{path}/tools/preprocess_data.py not found"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megatron", default=None, help="path to a Megatron-LM checkout (tools/preprocess_data.py)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: train vocab 8000 on Reuters)")
    ap.add_argument("--corpus", choices=["long", "short", "both"], default="both")
    # 8 (the notes' corpus) leaves Megatron-LM's tool under a second of work after ~14 s of start-up on an idle
    # machine, so start-up minus a separate start-up run is noise; 64 copies (~1M sentences) make the work dominate.
    ap.add_argument("--short-repeat", type=int, default=64, help="copies of the short sentences (default 64)")
    # One start-up run per tool swung Megatron-LM's from 9.1 to 13.7 s between two idle runs, and the long corpus's
    # ratio with it (8.4x vs 4.8x): the median of several steadies the number subtracted.
    ap.add_argument("--startup-runs", type=int, default=3, help="start-up runs per tool, median taken (default 3)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="tokbench_") as d:
        tmp = Path(d)
        tokdir = args.tokenizer
        if tokdir is None:
            from data_prep.tokenizer import train_tokenizer_from_file

            tokdir = str(train_tokenizer_from_file(SHARED / "cpt" / "reuters21578_news.jsonl", 8000, tmp / "tok"))
        why_not = megatron_usable(args.megatron)
        if why_not:
            print(f"Megatron-LM peer not run: {why_not}; comparing with datasets.map only")
        corpora = build_corpora(tmp, args.short_repeat)
        one = tmp / "one.jsonl"
        one.write_text(json.dumps({"text": "Revenue rose."}) + "\n")
        peers = tools(None if why_not else args.megatron, tokdir, args.workers, tmp)
        names = [c for c in ("long", "short") if args.corpus in (c, "both")]
        startup, startup_all = {}, {}
        for k, (mk, env) in peers.items():
            startup_all[k] = [run(mk(one, tmp / f"one_{k}_{i}"), env) for i in range(max(1, args.startup_runs))]
            startup[k] = statistics.median(startup_all[k])
        print("start-up s (one-document input; median used): " + "; ".join(
            f"{k} {', '.join(f'{t:.2f}' for t in ts)}" for k, ts in startup_all.items()))
        rows, ratios = [], {}
        for c in names:
            src = corpora[c]
            n_docs = sum(1 for _ in open(src))
            mb = src.stat().st_size / 1e6
            res = {}
            for k, (mk, env) in peers.items():
                wall = run(mk(src, tmp / f"{c}_{k}"), env)
                res[k] = wall
                proc = max(wall - startup[k], 1e-6)
                rows.append((c, k, n_docs, mb, wall, startup[k], n_docs / proc, mb / proc))
            # Token ids: ours vs Megatron's bytes; ours vs HF encode on a sample.
            from data_prep.tokenizer import load_tokenizer

            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                from megatron.core.datasets.indexed_dataset import IndexedDataset
            ours = IndexedDataset(str(tmp / f"{c}_data_prep_text_document"))
            tok = load_tokenizer(tokdir)
            texts = [json.loads(l)["text"] for _, l in zip(range(3000), open(src))]
            same_hf = all(list(ours[i]) == tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                          for i, t in enumerate(texts))
            same_meg = None
            if "megatron_lm" in res:
                mp = tmp / f"{c}_megatron_lm_text_document"
                same_meg = all((Path(f"{mp}{e}").read_bytes() == Path(f"{tmp}/{c}_data_prep_text_document{e}").read_bytes())
                               for e in (".bin", ".idx"))
            print(f"[{c}] ids == HF tokenizer on first {len(texts)} docs: {same_hf}; "
                  f".bin/.idx == Megatron-LM's byte for byte: {same_meg}")
            base = "megatron_lm" if "megatron_lm" in res else "datasets.map"
            pr = {k: (n_docs / max(res[k] - startup[k], 1e-6)) for k in res}
            ratios[c] = (pr["data_prep"] / pr[base], res[base] / res["data_prep"], base)
        print()
        print("| corpus | tool | docs | MB | wall s | start-up s | docs/s (excl. start-up) | MB/s (excl. start-up) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c, k, n, mb, wall, su, dps, mbs in rows:
            print(f"| {c} | {k} | {n:,} | {mb:.1f} | {wall:.2f} | {su:.2f} | {dps:,.0f} | {mbs:.2f} |")
        print()
        for c, (r_proc, r_wall, base) in ratios.items():
            print(f"{c}: data_prep / {base} = {r_proc:.2f}x throughput (excl. start-up), {r_wall:.2f}x wall")
        worst = min(ratios.values(), key=lambda x: x[0])
        print(f"ratio data_prep/{worst[2]} (worst corpus, excl. start-up): {worst[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
