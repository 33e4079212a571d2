"""Every evaluation task by name. A new task: its own file in this folder (or a class in its family's file) and one
entry here (see ../README.md); nothing else lists tasks.

- EVAL_TASKS: the tasks of `megafin eval run` (EvalTask, base.py), in report order.
- TASKS: the tasks whose rows are also trained on (TrainableTask: `record(row, k)`); the `megafin eval
  classification` CLI's --task choices and sft_records.py's sets come from here."""
from __future__ import annotations

from typing import Optional

from megafin.eval.errors import EvalError
from megafin.eval.tasks import cfa, convfinqa, financebench, financemath, fiqa_qa, headline, ner, sentiment, tatqa
from megafin.eval.tasks.base import EvalTask, Task

EVAL_TASKS: dict[str, EvalTask] = {t.name: t for t in (
    *sentiment.TASKS, headline.TASK, ner.TASK, *cfa.TASKS, financemath.TASK, tatqa.TASK, convfinqa.TASK,
    fiqa_qa.TASK, financebench.TASK)}

TASKS: dict[str, Task] = {t.name: t for t in (*sentiment.TASKS, headline.TASK)}


def get_eval_task(name: str) -> EvalTask:
    """The evaluation task called `name`; an EvalError naming the known ones otherwise."""
    if name not in EVAL_TASKS:
        raise EvalError(f"unknown evaluation task {name!r} (known: {', '.join(EVAL_TASKS)})")
    return EVAL_TASKS[name]


def get_task(name: str) -> Task:
    """The trainable task called `name`; an EvalError naming the known tasks otherwise."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_names(family: Optional[str] = None) -> list[str]:
    """Trainable task names in registry order, only those of `family` if given."""
    return [name for name, task in TASKS.items() if family is None or task.family == family]
