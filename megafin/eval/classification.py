"""The classification family's runner (tasks of family "classification" in tasks/registry.py: FPB, FiQA-SA, TFNS,
headlines), scored as FinDAP scores them: the model's greedy answer to the chat-formatted question (the `megafin`
generation engine, all questions batched), exact match with the gold label (case and surrounding space ignored).

    megafin eval classification --ckpt RUN/checkpoints/step_N --task fpb --data ../shared/data/fpb/test.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from megafin.eval.errors import EvalError
from megafin.eval.examples import read_examples
from megafin.eval.tasks.registry import get_task


def evaluate(ckpt: str | Path, task: str, data: str | Path, limit: Optional[int] = None,
             max_new_tokens: int = 6) -> dict[str, Any]:
    """Accuracy of greedy answers, the majority-class rate of the same examples, and a few predictions."""
    from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams
    from megafin.generate.engines import open_engine

    spec = get_task(task)
    if spec.family != "classification":
        raise EvalError(f"task {task!r} is scored by the {spec.family} runner, not classification")
    rows = read_examples(spec, Path(data), limit)
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    requests = [GenerationRequest(messages=[{"role": "user", "content": row["prompt"]}], params=greedy)
                for row in rows]
    try:
        with open_engine("megafin", str(ckpt)) as engine:
            results = engine.generate(requests)
    except GenerationError as err:
        raise EvalError(str(err)) from None
    predictions = [r.samples[0].text.strip().lower() for r in results]
    correct = sum(answer == row["response"].strip().lower() for answer, row in zip(predictions, rows))
    labels = Counter(r["response"].strip().lower() for r in rows)
    majority_label, majority_count = labels.most_common(1)[0]
    return {"task": task, "checkpoint": str(ckpt), "examples": len(rows), "accuracy": correct / len(rows),
            "majority_label": majority_label, "majority_rate": majority_count / len(rows),
            "predicted": dict(Counter(predictions).most_common(8))}


def main(args: Any) -> int:
    from megafin.checkpoint.errors import CheckpointError
    from megafin.convert.errors import ConvertError

    try:
        result = evaluate(args.ckpt, args.task, args.data, args.limit)
    except (EvalError, ConvertError, CheckpointError) as err:
        print(f"megafin eval: error: {err}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
