"""A labelled task file as instruction records, `prompt`/`response` per line (what `data_prep sft` reads), with the
prompts the evaluation asks (schemas: ../shared/data/SOURCES.md). Used by the tests and benches on the real data,
and by hand:

    python -m megafin.eval.tasks.sft_records fpb IN.jsonl OUT.jsonl
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Iterator

from megafin.eval.tasks.registry import TASKS


def xbrl(row: dict, k: int) -> dict:
    """XBRL terms are already instruction/output."""
    return {"prompt": row["instruction"], "response": row["output"]}


# Instruction sets that are trained on but are not evaluation tasks.
TRAINING_ONLY: dict[str, Callable[[dict, int], dict]] = {"xbrl": xbrl}
SETS: dict[str, Callable[[dict, int], dict]] = {**{name: task.record for name, task in TASKS.items()}, **TRAINING_ONLY}


def convert(task: str, path: str) -> Iterator[dict]:
    """The records of the task's file, in order."""
    record = SETS[task]
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            yield record(json.loads(line), k)


def write(task: str, src: str, dst: str) -> int:
    """`src` converted into `dst`; returns the number of records."""
    n = 0
    with open(dst, "w", encoding="utf-8") as out:
        for rec in convert(task, src):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SETS:
        sys.exit(f"usage: python -m megafin.eval.tasks.sft_records {{{'|'.join(SETS)}}} IN.jsonl OUT.jsonl")
    print(write(*sys.argv[1:4]))
