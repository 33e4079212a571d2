"""Where a task's examples come from: its file under --data-dir (the layout and schemas of ../shared/data), or,
without --data-dir, its config of the Salesforce/FinEval hub dataset (rows {query, answer}).

Hub rows carry only FinEval's own prompt and answer string, so they are scored as FinEval scores them (`FinEvalTask`:
exact match ignoring case and punctuation), not with the task's own parser; the report says which."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from megafin.eval.answers import normalize_text
from megafin.eval.errors import EvalError
from megafin.eval.tasks.base import EvalTask, Example, Scored

FINEVAL = "Salesforce/FinEval"


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank line of a JSONL file; EvalError naming the file/line otherwise."""
    if not path.is_file():
        raise EvalError(f"{path}: data file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise EvalError(f"{path}:{lineno}: not a JSON object ({err})") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}:{lineno}: not a JSON object (got {type(row).__name__})")
            rows.append((lineno, row))
    if not rows:
        raise EvalError(f"{path}: no {path.name} rows (the file is empty)")
    return rows


def task_examples(task: EvalTask, rows: Sequence[dict], where: str, lines: Optional[Sequence[int]] = None
                  ) -> list[Example]:
    """task.examples(rows); a row of the wrong schema is one EvalError naming `where` and its line. Examples may
    depend on a row's position (headline questions rotate), so all rows go in one call; only on failure is the
    culprit found row by row."""
    try:
        return task.examples(list(rows))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        for k, row in enumerate(rows):
            try:
                task.examples([row])
            except (KeyError, TypeError, AttributeError, ValueError) as row_err:
                line = lines[k] if lines is not None else k + 1
                raise EvalError(f"{where}:{line}: not a {task.name} example (missing or malformed {row_err}; "
                                f"schemas: ../shared/data/SOURCES.md)") from None
        raise EvalError(f"{where}: not {task.name} examples ({err})") from None


def local_examples(task: EvalTask, data_dir: Path) -> list[Example]:
    path = Path(data_dir) / task.data_file
    numbered = read_rows(path)
    examples = task_examples(task, [r for _, r in numbered], str(path), [n for n, _ in numbered])
    if not examples:
        raise EvalError(f"{path}: no {task.name} examples")
    return examples


# ------------------------------------------------------------------------------------------------- the hub dataset
@dataclass(frozen=True)
class FinEvalTask:
    """A task asked as the FinEval hub dataset asks it: the row's `query` as the user turn, scored by exact match
    with `answer` ignoring case and punctuation (FinDAP's FinEval metric). Baseline: the most frequent answer."""
    task: Any  # the EvalTask it stands for (name, title, decoding budget)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def title(self) -> str:
        return self.task.title

    metric = "exact_match"
    data_file = ""
    needs_judge = False

    @property
    def fineval_config(self) -> Optional[str]:
        return self.task.fineval_config

    @property
    def max_new_tokens(self) -> int:
        return self.task.max_new_tokens

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        return [Example(id=str(row.get("id", k)), messages=[{"role": "user", "content": str(row["query"])}],
                        gold=str(row["answer"])) for k, row in enumerate(rows)]

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        out = []
        for ex, text in zip(examples, outputs):
            answer = normalize_text(text)
            out.append(Scored(prediction=answer or None, unparsable=not answer,
                              value=float(bool(answer) and answer == normalize_text(ex.gold))))
        return out

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"exact_match": sum(s.value or 0.0 for s in scored) / max(1, len(scored))}

    def baseline(self, examples: Sequence[Example]) -> float:
        counts = Counter(normalize_text(e.gold) for e in examples)
        return counts.most_common(1)[0][1] / len(examples) if examples else 0.0


def hub_rows(config: str, source: str = FINEVAL) -> list[dict]:
    """The rows of one FinEval config: from `source`, a directory saved by `datasets` (save_to_disk; either one
    folder per config or a DatasetDict of configs), a local data directory, or the hub name. Test split if there
    is one, else the only split."""
    import datasets

    where = Path(source)
    try:
        if where.is_dir():
            saved = where / config if (where / config).is_dir() else where
            if (saved / "dataset_info.json").is_file() or (saved / "dataset_dict.json").is_file():
                data = datasets.load_from_disk(str(saved))
                if isinstance(data, datasets.DatasetDict) and config in data and saved == where:
                    data = data[config]  # one DatasetDict whose splits are the configs
            else:
                data = datasets.load_dataset(str(saved))
        else:
            data = datasets.load_dataset(source, config)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise EvalError(f"{source}: FinEval config {config!r} not loadable ({str(err).splitlines()[0]})") from None
    if isinstance(data, datasets.DatasetDict):
        split = "test" if "test" in data else (next(iter(data)) if len(data) == 1 else None)
        if split is None:
            raise EvalError(f"{source}: config {config!r} has splits {sorted(data)}, expected 'test' or only one")
        data = data[split]
    missing = {"query", "answer"} - set(data.column_names)
    if missing:
        raise EvalError(f"{source}: config {config!r} lacks the field(s) {', '.join(sorted(missing))} "
                        f"(FinEval rows are {{query, answer}})")
    return [dict(row) for row in data]


def hub_examples(task: EvalTask, source: str = FINEVAL) -> tuple[FinEvalTask, list[Example]]:
    if not task.fineval_config:
        raise EvalError(f"task {task.name}: not in the FinEval hub dataset; pass --data-dir")
    hub_task = FinEvalTask(task)
    rows = hub_rows(task.fineval_config, source)
    return hub_task, task_examples(hub_task, rows, f"{source}[{task.fineval_config}]")
