"""What the pipeline's data stage makes of labelled task files beside their instruction records (those are
megafin/eval/tasks/sft_records.py's, the prompts the evaluation asks): label-balanced sets, labelled preference pairs
(chosen = the gold answer, rejected = a wrong one), and the held-out part of a TRAINING split, written in the layout
`megafin eval run --data-dir` reads (`<task>/test.jsonl`), so every choice is made on training data, never on a test
split."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from megafin.eval.tasks.headline import ANSWERS as YES_NO
from megafin.eval.tasks.sentiment import LABELS as SENTIMENT


def held_out(row_id: str, fraction: float, seed: int) -> bool:
    """Whether a row is in the held-out part: by a hash of its id and the seed (stable under reordering, the same
    rows on every machine), about `fraction` of the rows."""
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_rows(rows: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(trained on, held out)."""
    train, held = [], []
    for k, row in enumerate(rows):
        (held if fraction > 0 and held_out(str(row.get("id", k)), fraction, seed) else train).append(row)
    return train, held


def balance_labels(recs: Sequence[dict], seed: int) -> list[dict]:
    """Every answer (label) repeated up to the most frequent one's count: whole copies, then a seeded sample of the
    remainder, in a seeded order. A model trained on a set whose label prior is its source's (FPB 59% neutral,
    FiQA-SA's posts 63% positive and 5% neutral) learns the source's style as a cue for that prior; balanced, the
    style carries no label and the model has to read the text. Sets without a closed answer set are returned as is."""
    by_label: dict[str, list[dict]] = {}
    for rec in recs:
        by_label.setdefault(rec["response"].strip().lower(), []).append(rec)
    if not all(wrong_answers(label) for label in by_label):
        return list(recs)
    rng = random.Random(seed)
    target = max(len(group) for group in by_label.values())
    out: list[dict] = []
    for label in sorted(by_label):
        group = by_label[label]
        copies, rest = divmod(target, len(group))
        out.extend(group * copies)
        out.extend(rng.sample(group, rest))
    rng.shuffle(out)
    return out


def wrong_answers(response: str) -> Sequence[str]:
    """The answers of the same question that are wrong: the other sentiment labels, or the other of Yes/No."""
    answer = response.strip().lower()
    for options in (SENTIMENT, YES_NO):
        if answer in options:
            return [o.capitalize() if response[:1].isupper() else o for o in options if o != answer]
    return []


def labelled_pairs(records: Iterable[dict], seed: int) -> Iterator[dict]:
    """chosen = the gold answer, rejected = a wrong answer drawn with `seed`; records without a closed answer set
    (XBRL definitions) give no pair."""
    rng = random.Random(seed)
    for rec in records:
        wrong = wrong_answers(rec["response"])
        if wrong:
            yield {"prompt": rec["prompt"], "chosen": rec["response"], "rejected": rng.choice(wrong)}


def write_jsonl(rows: Iterable[dict], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
