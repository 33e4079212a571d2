"""The pipeline data stage's records: the held-out part of a training split (stable, by id), labelled pairs
(rejected is always a wrong answer of the same question), and instruction records with the evaluation's prompts."""
from __future__ import annotations

import json

from megafin.eval.tasks import sft_records
from megafin.pipeline import records


def test_held_out_part_is_stable_and_about_the_fraction():
    rows = [{"id": f"r{i}"} for i in range(2000)]
    train, held = records.split_rows(rows, 0.1, seed=7)
    assert len(train) + len(held) == 2000 and 150 < len(held) < 250
    again_train, again_held = records.split_rows(list(reversed(rows)), 0.1, seed=7)
    assert {r["id"] for r in again_held} == {r["id"] for r in held}  # by id, not position
    assert {r["id"] for r in records.split_rows(rows, 0.1, seed=8)[1]} != {r["id"] for r in held}
    assert records.split_rows(rows, 0.0, seed=7) == (rows, [])


def test_labelled_pairs_reject_a_wrong_answer_of_the_same_question():
    recs = [{"prompt": "p1", "response": "neutral"}, {"prompt": "p2", "response": "Yes"},
            {"prompt": "p3", "response": "A long definition."}]
    pairs = list(records.labelled_pairs(recs * 20, seed=1))
    assert len(pairs) == 40  # the free-text record gives none
    sentiment = {p["rejected"] for p in pairs if p["prompt"] == "p1"}
    assert sentiment == {"negative", "positive"}
    assert {p["rejected"] for p in pairs if p["prompt"] == "p2"} == {"No"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_task_records_ask_what_the_evaluation_asks(shared_data):
    from megafin.eval.tasks.registry import get_eval_task

    row = json.loads((shared_data / "fpb/train.jsonl").read_text().splitlines()[0])
    (rec,), skipped = sft_records.records("fpb", [row])
    example = get_eval_task("fpb").examples([row])[0]
    assert example.messages[-1]["content"] == rec["prompt"] and rec["response"] == row["label"] and skipped == 0


def test_headline_sentiment_asks_the_sentiment_question_and_headlines_not_about_price_are_neutral(shared_data):
    from megafin.eval.tasks.registry import get_eval_task

    rows = [json.loads(line) for line in (shared_data / "headline/train.jsonl").read_text().splitlines()[:200]]
    recs, skipped = sft_records.records("headline_sentiment", rows)
    assert skipped == 0 and len(recs) == len(rows)
    assert any(r["price_sentiment"] == "none" for r in rows)
    assert [r["response"] for r in recs] == [{"none": "neutral"}.get(r["price_sentiment"], r["price_sentiment"])
                                             for r in rows]
    # the same question as the sentiment evaluation tasks
    asked = get_eval_task("tfns").examples([{"id": "x", "text": rows[0]["text"], "label": "neutral"}])[0]
    assert asked.messages[-1]["content"] == recs[0]["prompt"]


def test_balance_labels_repeats_every_label_to_the_largest_count():
    recs = ([{"prompt": f"p{i}", "response": "positive"} for i in range(10)]
            + [{"prompt": f"n{i}", "response": "negative"} for i in range(4)]
            + [{"prompt": f"u{i}", "response": "neutral"} for i in range(3)])
    out = records.balance_labels(recs, seed=3)
    counts = {label: sum(r["response"] == label for r in out) for label in ("positive", "negative", "neutral")}
    assert counts == {"positive": 10, "negative": 10, "neutral": 10}
    # whole copies first: every negative record twice, two of them a third time
    negatives = [r["prompt"] for r in out if r["response"] == "negative"]
    assert sorted(set(negatives)) == [f"n{i}" for i in range(4)] and min(map(negatives.count, set(negatives))) == 2
    assert out == records.balance_labels(recs, seed=3) and out != records.balance_labels(recs, seed=4)
    free_text = [{"prompt": "q", "response": "A definition."}, {"prompt": "q2", "response": "positive"}]
    assert records.balance_labels(free_text, seed=3) == free_text
