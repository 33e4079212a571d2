"""FinGPT/FinDAP-style instruction records from the labelled financial sets (schemas: ../shared/data/SOURCES.md).

Classification sets become `prompt`/`response` records (what `data_prep sft` reads); used by the tests and
bench/packing.py on the real data, and usable by hand: `python -m data_prep.fintasks fpb IN.jsonl OUT.jsonl`.
"""
from __future__ import annotations

import json
import sys
from typing import Iterator

SENTIMENT_Q = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."
HEADLINE_Q = {
    "price_up": "Does the news headline talk about price going up?",
    "price_constant": "Does the news headline talk about price staying constant?",
    "price_down": "Does the news headline talk about price going down?",
    "past_information": "Does the news headline talk about a past price or event?",
    "future_information": "Does the news headline talk about a future price or event?",
    "asset_comparison": "Does the news headline compare gold with any other asset?",
}


def sentiment(row: dict) -> dict:
    """FPB, FiQA-SA, TFNS rows: {text, label}."""
    return {"prompt": f"{SENTIMENT_Q}\nInput: {row['text']}\nAnswer:", "response": row["label"]}


def headline(row: dict, k: int) -> dict:
    """Gold headlines: one yes/no question per row, the question chosen by the row's position (deterministic)."""
    keys = list(HEADLINE_Q)
    key = keys[k % len(keys)]
    answer = "Yes" if row["labels"][key] == 1 else "No"
    return {"prompt": f"{HEADLINE_Q[key]} Answer Yes or No.\nInput: {row['text']}\nAnswer:", "response": answer}


def xbrl(row: dict) -> dict:
    """XBRL terms are already instruction/output."""
    return {"prompt": row["instruction"], "response": row["output"]}


CONVERTERS = {"fpb": "sentiment", "fiqa_sa": "sentiment", "tfns": "sentiment", "headline": "headline", "xbrl": "xbrl"}


def convert_row(task: str, row: dict, k: int) -> dict:
    """One labelled row (the k-th of its file) as a prompt/response record; KeyError/TypeError on a wrong schema."""
    kind = CONVERTERS[task]
    return headline(row, k) if kind == "headline" else sentiment(row) if kind == "sentiment" else xbrl(row)


def convert(task: str, path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            yield convert_row(task, json.loads(line), k)


def write(task: str, src: str, dst: str) -> int:
    n = 0
    with open(dst, "w", encoding="utf-8") as out:
        for rec in convert(task, src):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in CONVERTERS:
        sys.exit(f"usage: python -m data_prep.fintasks {{{'|'.join(CONVERTERS)}}} IN.jsonl OUT.jsonl")
    print(write(*sys.argv[1:4]))
