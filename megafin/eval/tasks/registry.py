"""Every evaluation task by name. A new task: its own file in this folder and one entry here (see ../README.md).
The CLI's --task choices and sft_records.py's task list come from here; nothing else lists tasks."""
from __future__ import annotations

from typing import Optional

from megafin.eval.errors import EvalError
from megafin.eval.tasks import headline, sentiment
from megafin.eval.tasks.base import Task

TASKS: dict[str, Task] = {t.name: t for t in (*sentiment.TASKS, headline.TASK)}


def get_task(name: str) -> Task:
    """The task called `name`; an EvalError naming the known tasks otherwise."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_names(family: Optional[str] = None) -> list[str]:
    """Task names in registry order, only those of `family` if given."""
    return [name for name, task in TASKS.items() if family is None or task.family == family]
