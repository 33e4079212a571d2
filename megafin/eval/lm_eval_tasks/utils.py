"""lm-eval hooks of megafin's task YAMLs: every one goes through megafin's task code (megafin/eval/tasks), so an
lm-eval score is the `megafin eval run` score of the same outputs.

Documents are the task's examples (not its raw rows: a row may make several examples), built by megafin from
`data_dir` (--metadata '{"data_dir": DIR}', the layout of ../shared/data) or, without it, from the FinEval hub
dataset (`fineval`: a hub name or local datasets directory). process_results passes each output through unscored;
`aggregate` rebuilds the examples from the same source and scores them all at once with the task's own score and
aggregate (F1-type metrics are not means of per-example values)."""
from __future__ import annotations

import json
from typing import Any, Optional

from megafin.eval.run import prepare, score_task
from megafin.eval.tasks.registry import EVAL_TASKS, get_eval_task


def _source(data_dir: Optional[str], fineval: Optional[str]) -> str:
    return json.dumps({"data_dir": data_dir, "fineval": fineval})


def _prepared(name: str, source: str) -> Any:
    from pathlib import Path

    where = json.loads(source)
    data_dir = Path(where["data_dir"]) if where["data_dir"] else None
    return prepare([get_eval_task(name)], data_dir, None, where["fineval"])[0]


def _dataset(name: str, data_dir: Optional[str] = None, fineval: Optional[str] = None, **_: Any) -> Any:
    import datasets

    source = _source(data_dir, fineval)
    p = _prepared(name, source)
    docs = [{"task": name, "index": k, "source": source, "id": e.id,
             "prompt": "\n".join(m["content"] for m in e.messages if m["role"] == "user"),
             "gold": json.dumps(e.gold, default=repr)} for k, e in enumerate(p.examples)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def process_results(doc: dict, results: list) -> dict:
    task = get_eval_task(doc["task"])
    return {task.metric: (doc["task"], doc["source"], doc["index"], results[0])}


def aggregate(items: list) -> float:
    """The task's headline metric over these outputs, as `megafin eval run` computes it."""
    name, source = items[0][0], items[0][1]
    p = _prepared(name, source)
    chosen = sorted(items, key=lambda it: it[2])
    examples = [p.examples[it[2]] for it in chosen]
    entry, _ = score_task(p.task, examples, [it[3] for it in chosen], resamples=0)
    return entry["score"]


# One dataset function per task (lm-eval's custom_dataset takes no task name).
for _name in EVAL_TASKS:
    globals()[f"{_name}_dataset"] = (lambda n: lambda **kw: _dataset(n, **kw))(_name)
