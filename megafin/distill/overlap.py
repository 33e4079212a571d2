"""Training prompts must not be evaluation questions: the check `megafin distill` runs before anything else.

`find_overlap` is the one place that decides what "overlap" means: exact match on normalized question text
(megafin.eval.answers.normalize_text) against the test splits of the evaluation sets in the shared data layout.
Switching to an n-gram check (megafin/eval/contamination.py) is a change of this function's body only."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from megafin.distill.errors import DistillError

# The evaluation files (relative to --eval-data-dir, the layout of ../shared/data/SOURCES.md) and the field(s)
# holding their question text. convfinqa's dev split is its evaluation split; financemath validation and tatqa dev
# are the training-usable splits, so they are not here.
EVAL_SETS: dict[str, tuple[str, ...]] = {
    "tatqa/test.jsonl": ("question",),
    "cfa/cfa_easy_test.jsonl": ("question",),
    "cfa/cfa_challenge_test.jsonl": ("question",),
    "financebench/test.jsonl": ("question",),
    "fiqa_qa/test.jsonl": ("question",),
    "convfinqa/dev.jsonl": ("questions",),
    "fpb/test.jsonl": ("text",),
    "fiqa_sa/test.jsonl": ("text",),
    "tfns/test.jsonl": ("text",),
    "headline/test.jsonl": ("text",),
}


def default_eval_data_dir() -> Path:
    """../shared/data beside the checkout (the layout the tests and benchmarks read)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class OverlapReport:
    checked: int = 0                                          # prompts checked
    eval_files: list[str] = field(default_factory=list)       # the evaluation files read
    hits: list[tuple[int, str, str]] = field(default_factory=list)  # (input line, question, eval file) per overlap

    def by_file(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, name in self.hits:
            counts[name] = counts.get(name, 0) + 1
        return counts


def _texts(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, str))


def eval_questions(eval_dir: Path) -> tuple[dict[str, str], list[str]]:
    """(normalized question -> the eval file it is in, the files read). A missing directory is an error: the
    check cannot be done (--allow-overlap skips it)."""
    from megafin.eval.answers import normalize_text

    if not eval_dir.is_dir():
        raise DistillError(f"--eval-data-dir {eval_dir}: not a directory, so training prompts cannot be checked "
                           f"against the evaluation sets (expected the ../shared/data layout; or --allow-overlap)")
    index: dict[str, str] = {}
    read: list[str] = []
    for name, keys in EVAL_SETS.items():
        path = eval_dir / name
        if not path.is_file():
            continue
        read.append(name)
        for text in path.read_text(encoding="utf-8").splitlines():
            if not text.strip():
                continue
            row = json.loads(text)
            for key in keys:
                for question in _texts(row.get(key)):
                    index.setdefault(normalize_text(question), name)
    if not read:
        raise DistillError(f"--eval-data-dir {eval_dir}: none of the evaluation files is there (expected e.g. "
                           f"{next(iter(EVAL_SETS))}; or --allow-overlap)")
    return index, read


def find_overlap(questions: Sequence[tuple[int, str]], eval_dir: Optional[Path] = None) -> OverlapReport:
    """Which (input line, question) pairs overlap an evaluation set (eval_dir: default_eval_data_dir())."""
    from megafin.eval.answers import normalize_text

    eval_dir = eval_dir or default_eval_data_dir()
    index, read = eval_questions(eval_dir)
    report = OverlapReport(checked=len(questions), eval_files=read)
    for line, question in questions:
        name = index.get(normalize_text(question))
        if name is not None:
            report.hits.append((line, question, name))
    return report


def refusal(report: OverlapReport, prompts_path: Path) -> str:
    """The one line that refuses a prompt file with overlaps."""
    line, question, name = report.hits[0]
    files = ", ".join(f"{k}: {v}" for k, v in sorted(report.by_file().items()))
    shown = question if len(question) <= 80 else question[:77] + "..."
    return (f"--prompts {prompts_path}: {len(report.hits)} of {report.checked} questions are in evaluation sets "
            f"({files}), e.g. line {line}: {shown!r}; test splits are never trained on: remove them, leave them out "
            f"with --drop-overlap, or keep them with --allow-overlap")
