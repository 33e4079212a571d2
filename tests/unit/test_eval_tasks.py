"""The evaluation tasks of `megafin eval run` (megafin/eval/tasks): prompts and gold answers on real rows of
../shared/data, answer extraction on hand-made outputs (correct, wrong, unparsable), aggregation and baselines."""
from __future__ import annotations

import json
from itertools import islice

import pytest

from megafin.eval.errors import EvalError
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.registry import EVAL_TASKS, TASKS, get_eval_task


def first_rows(shared_data, task, n=3) -> list[dict]:
    with open(shared_data / task.data_file, encoding="utf-8") as f:
        return [json.loads(line) for line in islice(f, n)]


def run(task, examples, outputs, judge=None) -> tuple[list[Scored], dict[str, float]]:
    scored = task.score(examples, outputs, judge)
    assert len(scored) == len(examples)
    return scored, task.aggregate(examples, scored)


def test_registry_lists_the_twelve_tasks_in_report_order_and_names_them_on_a_miss():
    assert list(EVAL_TASKS)[:3] == ["fpb", "fiqa_sa", "tfns"]
    for name, task in EVAL_TASKS.items():
        assert task.name == name and task.title and task.metric and task.data_file.endswith(".jsonl")
        assert task.max_new_tokens > 0 and isinstance(task.needs_judge, bool)
    with pytest.raises(EvalError, match=r"unknown evaluation task 'fbp' \(known: fpb, fiqa_sa"):
        get_eval_task("fbp")
    # The trainable tasks (megafin eval classification, sft_records) are unchanged.
    assert list(TASKS) == ["fpb", "fiqa_sa", "tfns", "headline"]


def test_fpb_examples_on_real_rows(shared_data):
    task = get_eval_task("fpb")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert [ex.id for ex in examples] == [r["id"] for r in rows]
    assert [ex.gold for ex in examples] == [r["label"] for r in rows]
    assert examples[0].messages == [{"role": "user", "content": (
        "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\n"
        f"Input: {rows[0]['text']}\nAnswer:")}]
    # The question asked is the record trained on (sft_records), so the two cannot drift apart.
    assert examples[1].messages[0]["content"] == task.record(rows[1], 1)["prompt"]


def test_sentiment_extraction_correct_wrong_unparsable_and_metrics():
    task = get_eval_task("fpb")
    gold = ["positive", "negative", "neutral", "neutral", "positive"]
    examples = [Example(id=str(i), messages=[], gold=g) for i, g in enumerate(gold)]
    outputs = ["Positive.", "The sentiment is negative, not positive", "I cannot tell", "neutral", "negatively"]
    scored, result = run(task, examples, outputs)
    assert [s.prediction for s in scored] == ["positive", "negative", None, "neutral", None]
    assert [s.unparsable for s in scored] == [False, False, True, False, True]
    assert [s.value for s in scored] == [1.0, 1.0, 0.0, 1.0, 0.0]
    # positive: tp 1 fn 1 -> 2/3; negative: 1; neutral: tp 1 fn 1 -> 2/3; weighted by support 2, 1, 2.
    assert result == {"accuracy": pytest.approx(3 / 5), "weighted_f1": pytest.approx((2 * 2 / 3 + 1 + 2 * 2 / 3) / 5)}
    assert list(result)[0] == task.metric
    assert task.baseline(examples) == pytest.approx(2 / 5)  # "positive", the first of the two most frequent


def test_sentiment_rows_of_the_wrong_schema_raise_key_or_type_errors():
    task = get_eval_task("fpb")
    with pytest.raises(KeyError):
        task.examples([{"id": "a", "text": "x"}])
    with pytest.raises(KeyError):
        task.examples([{"id": "a", "text": "x", "label": "bullish"}])
    with pytest.raises((TypeError, AttributeError)):
        task.examples([{"id": "a", "text": "x", "label": 3}])
