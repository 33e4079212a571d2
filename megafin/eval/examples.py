"""Reading a task's data file into its prompt/response records, for any evaluation runner."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from megafin.eval.errors import EvalError
from megafin.eval.tasks.base import Task


def read_examples(task: Task, path: Path, limit: Optional[int]) -> list[dict]:
    """The task's prompt/response records; a file that is missing, holds no examples or has a malformed line is an
    EvalError naming it (blank lines are skipped)."""
    if not path.is_file():
        raise EvalError(f"{path}: data file not found")
    rows: list[dict] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(task.record(json.loads(line), len(rows)))
            except ValueError as err:
                raise EvalError(f"{path}:{lineno}: not a JSON object ({err})") from None
            except (KeyError, TypeError, AttributeError) as err:
                raise EvalError(f"{path}:{lineno}: not a {task.name} example (missing or malformed {err}; schemas: "
                                f"../shared/data/SOURCES.md)") from None
    if not rows:
        raise EvalError(f"{path}: no {task.name} examples (the file is empty)")
    return rows
