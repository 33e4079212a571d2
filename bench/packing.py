"""Packing efficiency: share of non-pad tokens at seq 2048 on an SFT mix of the ../shared/data sets.

data_prep's best-fit-decreasing packs (written by `data_prep sft`) vs padding every example to the longest one,
vs padding to the longest in each batch of 8 (dynamic padding), vs first-fit packing in a shuffled stream order.
All on the same tokenized examples (the documents in data_prep's own output). Last line: the data_prep share.

    python bench/packing.py [--tokenizer DIR] [--seq-length 2048]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def write_mix(tmp: Path) -> list[str]:
    from megafin.eval.tasks import sft_records

    paths = []
    for task, rel in (("fpb", "fpb/train.jsonl"), ("fiqa_sa", "fiqa_sa/train.jsonl"), ("headline", "headline/train.jsonl"),
                      ("xbrl", "instruct/xbrl_terms_train.jsonl")):
        p = tmp / f"{task}.jsonl"
        sft_records.write(task, str(SHARED / rel), str(p))
        paths.append(str(p))
    # Long-form answers: FiQA opinion QA and FinanceBench (prompt with 10-K page text).
    p = tmp / "qa.jsonl"
    with open(p, "w") as f:
        for l in open(SHARED / "fiqa_qa/test.jsonl"):
            r = json.loads(l)
            f.write(json.dumps({"prompt": r["question"], "response": r["answer"]}) + "\n")
        for l in open(SHARED / "financebench/train.jsonl"):
            r = json.loads(l)
            f.write(json.dumps({"prompt": r["prompt"], "response": r["answer"]}) + "\n")
    paths.append(str(p))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: train vocab 8000 on Reuters)")
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from data_prep.packed_writer import sft
    from data_prep.packing import fill_ratio, first_fit
    from megafin.data.packed_dataset import PackedSequences

    L = args.seq_length
    with tempfile.TemporaryDirectory(prefix="packbench_") as d:
        tmp = Path(d)
        tok = args.tokenizer
        if tok is None:
            from data_prep.tokenizer import train_tokenizer_from_file

            tok = str(train_tokenizer_from_file(SHARED / "cpt" / "reuters21578_news.jsonl", 8000, tmp / "tok"))
        r = sft(write_mix(tmp), tok, str(tmp / "sft"), seq_length=L, workers=args.workers, quiet=True)
        ds = PackedSequences(str(tmp / "sft"))
        lengths = np.concatenate([ds[i][2] for i in range(len(ds))])
        n_tok = int(lengths.sum())
        rng = np.random.default_rng(0)
        stream = lengths[rng.permutation(lengths.size)]
        ff = first_fit(stream, L)
        batches = [stream[i : i + 8] for i in range(0, stream.size, 8)]
        rows = [
            ("pad every example to the longest", lengths.size, n_tok / (lengths.size * int(lengths.max()))),
            ("pad to the longest per batch of 8", lengths.size, n_tok / sum(len(b) * int(b.max()) for b in batches)),
            ("first-fit packing (stream order)", len(ff), fill_ratio(stream, ff, L)),
            ("data_prep best-fit-decreasing", len(ds), r.meta["fill"]),
        ]
        print(f"SFT mix: {r.stats['docs_read']:,} examples read, {lengths.size:,} kept "
              f"(skipped: {r.stats['skipped']}), {n_tok:,} tokens, longest {int(lengths.max())}, "
              f"median {int(np.median(lengths))}")
        print(f"| method (seq {L}) | sequences | non-pad share |")
        print("| --- | ---: | ---: |")
        for name, n, share in rows:
            print(f"| {name} | {n:,} | {share:.2%} |")
        print(f"data_prep non-pad share at {L}: {r.meta['fill']:.2%} (target >= 98%); "
              f"{r.meta['fill'] / rows[2][2]:.3f}x first-fit, {r.meta['fill'] / rows[0][2]:.2f}x pad-to-longest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
