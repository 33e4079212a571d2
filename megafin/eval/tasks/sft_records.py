"""A labelled task file as instruction records, `prompt`/`response` per line (what `data_prep sft` reads), with the
prompts the evaluation asks (schemas: ../shared/data/SOURCES.md). Used by the tests and benches on the real data,
and by hand:

    python -m megafin.eval.tasks.sft_records fpb IN.jsonl OUT.jsonl
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Iterable, Iterator, Optional

from megafin.eval.tasks.registry import TASKS
from megafin.eval.tasks.sentiment import LABELS as SENTIMENT, QUESTION as SENTIMENT_QUESTION


def xbrl(row: dict, k: int) -> dict:
    """XBRL terms are already instruction/output."""
    return {"prompt": row["instruction"], "response": row["output"]}


def headline_sentiment(row: dict, k: int) -> dict:
    """A gold-news headline's `price_sentiment` asked as the sentiment tasks ask it: sentiment on short news
    headlines, which no sentiment training split here has (FiQA-SA's is microblog posts, FPB's report sentences).
    A headline not about the price (`none`: 19% of them) reads neither up nor down, so it is `neutral`, as news
    without a bullish or bearish reading is in FPB and TFNS; without it, 3% of these headlines were neutral."""
    label = row["price_sentiment"]
    if label == "none":
        label = "neutral"
    if label not in SENTIMENT:
        raise KeyError(f"price_sentiment {label!r} (expected one of {', '.join(SENTIMENT)}, none)")
    return {"prompt": f"{SENTIMENT_QUESTION}\nInput: {row['text']}\nAnswer:", "response": label}


# Instruction sets that are trained on but are not evaluation tasks. A converter returns None for a row that has
# no record of its kind (counted by the caller, never dropped silently).
TRAINING_ONLY: dict[str, Callable[[dict, int], Optional[dict]]] = {"xbrl": xbrl,
                                                                   "headline_sentiment": headline_sentiment}
SETS: dict[str, Callable[[dict, int], Optional[dict]]] = {**{name: task.record for name, task in TASKS.items()},
                                                          **TRAINING_ONLY}


def convert(task: str, path: str) -> Iterator[Optional[dict]]:
    """The records of the task's file, in order (None for a row without a record of this kind)."""
    record = SETS[task]
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            yield record(json.loads(line), k)


def records(task: str, rows: Iterable[dict]) -> tuple[list[dict], int]:
    """(the rows as the task's prompt/response records, rows without a record of this kind)."""
    record = SETS[task]
    out, skipped = [], 0
    for k, row in enumerate(rows):
        rec = record(row, k)
        if rec is None:
            skipped += 1
        else:
            out.append(rec)
    return out, skipped


def write(task: str, src: str, dst: str) -> tuple[int, int]:
    """`src` converted into `dst`; returns (records written, rows without a record of this kind)."""
    with open(src, encoding="utf-8") as f:
        recs, skipped = records(task, (json.loads(line) for line in f))
    with open(dst, "w", encoding="utf-8") as out:
        for rec in recs:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(recs), skipped


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SETS:
        sys.exit(f"usage: python -m megafin.eval.tasks.sft_records {{{'|'.join(SETS)}}} IN.jsonl OUT.jsonl")
    written, skipped = write(*sys.argv[1:4])
    print(f"{written} records, {skipped} rows without a {sys.argv[1]} record skipped")
