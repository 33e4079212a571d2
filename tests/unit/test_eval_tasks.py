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


def examples_of(task, golds, **meta) -> list[Example]:
    return [Example(id=str(i), messages=[], gold=g, meta=dict(meta)) for i, g in enumerate(golds)]


def test_registry_lists_the_twelve_tasks_in_report_order_and_names_them_on_a_miss():
    assert list(EVAL_TASKS) == ["fpb", "fiqa_sa", "tfns", "headline", "ner", "cfa_easy", "cfa_challenge",
                                "financemath", "tatqa", "convfinqa", "fiqa_qa", "financebench"]
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
    assert result == {"accuracy": pytest.approx(3 / 5), "weighted_f1": pytest.approx((2 * 2 / 3 + 1 + 2 * 2 / 3) / 5),
                      "macro_f1": pytest.approx((2 / 3 + 1 + 2 / 3) / 3)}
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


def test_every_task_reads_its_first_real_rows_and_scores_its_own_aggregate(shared_data):
    """Each task's examples on 3 real rows: ids kept, one user turn, the metric named first in aggregate(), and a
    baseline in [0, 1]; empty outputs are scored (never an exception) and as unparsable where nothing is found."""
    class NoJudge:
        def judge(self, items):
            from megafin.distill.judge.api import Judgment
            return [Judgment(key=i.key, kept=False, discard_reason="no_final_answer") for i in items]

    for task in EVAL_TASKS.values():
        rows = first_rows(shared_data, task)
        examples = task.examples(rows)
        assert {ex.id.split(":")[0] for ex in examples} == {str(r["id"]) for r in rows}, task.name
        assert all(len(ex.messages) == 1 and ex.messages[0]["role"] == "user" for ex in examples)
        scored, result = run(task, examples, [""] * len(examples), NoJudge())
        assert list(result)[0] == task.metric and 0.0 <= task.baseline(examples) <= 1.0, task.name
        if task.name != "ner":  # an empty NER answer says "no entities"
            assert all(s.unparsable for s in scored), task.name


def test_headline_asks_all_six_questions_of_each_real_headline(shared_data):
    task = get_eval_task("headline")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert len(examples) == 18
    first = [ex for ex in examples if ex.id.startswith(rows[0]["id"] + ":")]
    assert [ex.meta["label"] for ex in first] == ["price_up", "price_constant", "price_down", "past_information",
                                                  "future_information", "asset_comparison"]
    assert [ex.gold for ex in first] == ["yes" if rows[0]["labels"][ex.meta["label"]] else "no" for ex in first]
    assert first[2].messages[0]["content"] == (
        f"Does the news headline talk about price going down? Answer Yes or No.\nInput: {rows[0]['text']}\nAnswer:")
    # The training record (rotation by position) asks the same question text.
    assert task.record(rows[0], 2)["prompt"] == first[2].messages[0]["content"]


def test_headline_average_of_per_label_f1_and_majority_baseline():
    from sklearn.metrics import f1_score

    task = get_eval_task("headline")
    labels = ["price_up"] * 4 + ["price_down"] * 4
    gold = ["yes", "no", "no", "yes", "no", "no", "no", "yes"]
    examples = [Example(id=str(i), messages=[], gold=g, meta={"label": lab}) for i, (g, lab) in
                enumerate(zip(gold, labels))]
    outputs = ["Yes", "No.", "yes", "maybe", "No", "No", "Yes", "YES"]
    scored, result = run(task, examples, outputs)
    assert [s.prediction for s in scored] == ["yes", "no", "yes", None, "no", "no", "yes", "yes"]
    assert [s.unparsable for s in scored] == [False] * 3 + [True] + [False] * 4
    sk = [p or "missing" for p in (s.prediction for s in scored)]
    expected = (f1_score(gold[:4], sk[:4], average="weighted", labels=["yes", "no"]) +
                f1_score(gold[4:], sk[4:], average="weighted", labels=["yes", "no"])) / 2
    assert result["avg_f1"] == pytest.approx(expected, rel=1e-12)
    assert result["accuracy"] == pytest.approx(5 / 8)
    # price_up: a yes/no tie -> "yes" (first seen): F1(yes)=2/3 (w .5), F1(no)=0; price_down: "no" x3 of 4 -> 0.8*0.75.
    assert task.baseline(examples) == pytest.approx((0.5 * 2 / 3 + 0.75 * 6 / 7) / 2)


def test_ner_real_rows_with_entities_and_entity_f1_by_hand(shared_data):
    task = get_eval_task("ner")
    with open(shared_data / task.data_file, encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if any(t != "O" for t in r["tags"])][:3]
    examples = task.examples(rows)
    assert examples[0].messages[0]["content"].endswith(f"\nSentence: {' '.join(rows[0]['tokens'])}\nAnswer:")
    assert all(ex.gold for ex in examples)
    hand = [Example(id="a", messages=[], gold=[("Lender", "PER"), ("Borrower", "PER")]),
            Example(id="b", messages=[], gold=[("Silicium de Provence S . A . S .", "ORG"), ("France", "LOC")]),
            Example(id="c", messages=[], gold=[]),
            Example(id="d", messages=[], gold=[("EUR", "MISC")])]
    outputs = ["Lender, PER; Borrower, ORG; Agent, PER",          # 1 right, 2 wrong
               "Answer: silicium de provence S.A.S., ORG\nFrance, LOC",  # both right (case, punctuation ignored)
               "None",                                            # right: no entities
               "I am not sure."]                                  # unparsable
    scored, result = run(task, hand, outputs)
    assert [s.unparsable for s in scored] == [False, False, False, True]
    assert scored[2].prediction == [] and scored[0].prediction[1] == ("Borrower", "ORG")
    tp, fp, fn = 3, 2, 2
    assert result["entity_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert task.baseline(hand) == 0.0
    from megafin.eval.tasks.ner import parse_entities

    assert parse_entities("Answer: Lender (PER)\n- Acme Bank: ORG") == [("Lender", "PER"), ("Acme Bank", "ORG")]
    assert parse_entities("There are no named entities here.") == [] and parse_entities("") == []


def test_cfa_prompt_asks_for_a_selection_and_extraction_cases(shared_data):
    for name in ("cfa_easy", "cfa_challenge"):
        task = get_eval_task(name)
        rows = first_rows(shared_data, task)
        examples = task.examples(rows)
        assert [ex.gold for ex in examples] == [r["answer"] for r in rows]
        content = examples[0].messages[0]["content"]
        assert content.startswith(rows[0]["prompt"].rstrip()[:-len("Answer:")].rstrip())
        assert content.endswith('give your choice on the last line as "Selection: [[X]]", where X is one of A, B, C.')
        assert task.baseline(examples) == pytest.approx(1 / 3)
    outputs = ["The premium is for inflation.\nSelection: [[C]]", "Answer: (b)", "Selection: [[A]]",
               "It depends on the rate.", "B. liquidity.",
               "A premium for expected inflation is added to the real rate, so it is inflation."]
    scored, result = run(task, examples_of(task, ["C", "B", "B", "A", "B", "C"], letters="ABC"), outputs)
    assert [s.prediction for s in scored] == ["C", "B", "A", None, "B", None]
    assert [s.unparsable for s in scored] == [False, False, False, True, False, True]
    assert result == {"accuracy": pytest.approx(3 / 6)}


def test_financemath_prompt_and_numeric_tolerance(shared_data):
    task = get_eval_task("financemath")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert [ex.gold for ex in examples] == [-8184.0, 175.0, 0.578]
    content = examples[0].messages[0]["content"]
    assert content.startswith(rows[0]["tables"][0]) and f"Question: {rows[0]['question']}\n" in content
    assert content.endswith('"Answer: <number>" (a number only, no units).')
    outputs = ["... so the loss is 8,184.\nAnswer: -8,184",  # right
               "Answer: 175.2",                            # within 0.15%: right
               "Answer: 0.59",                             # 2% off: wrong
               "I do not know."]                           # unparsable
    scored, result = run(task, examples_of(task, [-8184.0, 175.0, 0.578, 3.0]), outputs)
    assert [s.prediction for s in scored] == [-8184.0, 175.2, 0.59, None]
    assert [s.value for s in scored] == [1.0, 1.0, 0.0, 0.0] and scored[3].unparsable
    assert result == {"accuracy": pytest.approx(0.5)}
    # Baseline: the most frequent gold answer (175.0, twice) for every question.
    assert task.baseline(examples_of(task, [175.0, 3.0, 175.0, 9.0])) == pytest.approx(0.5)


def test_tatqa_prompt_gold_and_exact_match_with_scale(shared_data):
    task = get_eval_task("tatqa")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert [ex.gold for ex in examples] == [["the modified retrospective method"], ["$0.5 million"],
                                            ["1,568.6", "690.5"]]
    content = examples[0].messages[0]["content"]
    assert content.startswith("Table:\n| Current assets | As Reported |")
    assert f"\n\nQuestion: {rows[0]['question']}\nThink step by step" in content
    outputs = ["Reasoning.\nAnswer: The modified retrospective method.",
               "Answer: $0.5 million",
               "Answer: 690.5; 1,568.6",
               "Answer: 1,234 thousand",  # gold 1,234 thousand
               "Answer: 1,234",           # scale missing: wrong, as TAT-QA scores it
               "Answer: 17.7%",           # gold 17.7 percent
               "the answer must be 5"]    # no Answer: line: unparsable
    golds = [ex.gold for ex in examples] + [["1,234"], ["1,234"], ["17.7"], ["5"]]
    scales = ["", "", "", "thousand", "thousand", "percent", ""]
    hand = [Example(id=str(i), messages=[], gold=g, meta={"scale": s, "answer_type": "span"})
            for i, (g, s) in enumerate(zip(golds, scales))]
    scored, result = run(task, hand, outputs)
    assert [s.value for s in scored] == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert [s.unparsable for s in scored] == [False] * 6 + [True]
    assert result == {"exact_match": pytest.approx(5 / 7)}
    assert task.baseline(hand) == pytest.approx(2 / 7)  # "1,234 thousand" twice


def test_convfinqa_last_turn_with_history_and_executed_answer(shared_data):
    task = get_eval_task("convfinqa")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert [ex.gold for ex in examples] == [10.82621, -0.09709, 14.0]
    content = examples[1].messages[0]["content"]
    assert content.startswith(rows[1]["pre_text"]) and "| millions of dollars | dec . 31 2008 |" in content
    assert ("Conversation so far:\nQ: what was the equipment rents payable in 2008?\nA: 93\n" in content)
    assert f"Question: {rows[1]['questions'][-1]}\n" in content
    outputs = ["Answer: 10.83", "Answer: -9.7%", "Answer: 9.7", "Answer: no", "nothing"]
    hand = examples_of(task, [10.82621, -0.09709, -0.09709, "yes", 3.0])
    scored, result = run(task, hand, outputs)
    assert [s.prediction for s in scored] == [10.83, -9.7, 9.7, "no", None]
    assert [s.value for s in scored] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert result == {"accuracy": pytest.approx(2 / 5)}
    assert task.baseline(hand) == pytest.approx(2 / 5)  # -0.09709, the most frequent


def test_fiqa_qa_rouge_l_and_question_echo_baseline(shared_data):
    from rouge_score import rouge_scorer

    task = get_eval_task("fiqa_qa")
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert [ex.gold for ex in examples] == [r["answer"] for r in rows]
    assert examples[0].messages[0]["content"].endswith(f"\nQuestion: {rows[0]['question']}\nAnswer:")
    outputs = ["You are confusing a lot of things here: merge B LLC into A LLC.", "", "Depreciate it."]
    scored, result = run(task, examples, outputs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(r["answer"], o)["rougeL"].fmeasure if o else 0.0 for r, o in zip(rows, outputs)]
    assert [s.value for s in scored] == pytest.approx(expected, rel=1e-12)
    assert [s.unparsable for s in scored] == [False, True, False]
    assert result == {"rouge_l": pytest.approx(sum(expected) / 3, rel=1e-12)}
    assert task.baseline(examples) == pytest.approx(
        sum(scorer.score(r["answer"], r["question"])["rougeL"].fmeasure for r in rows) / 3, rel=1e-12)


def test_financebench_is_judged_through_the_judge_client_contract(shared_data):
    from megafin.distill.judge.api import JudgeItem, Judgment

    task = get_eval_task("financebench")
    assert task.needs_judge
    rows = first_rows(shared_data, task)
    examples = task.examples(rows)
    assert examples[0].messages[0]["content"] == rows[0]["prompt"] and examples[1].gold == "1832"

    class FakeJudge:
        def __init__(self):
            self.items = []

        def judge(self, items):
            self.items += items
            verdicts = {"financebench-test-000": Judgment(key="financebench-test-000", kept=True,
                                                          final_answer="Yes", correct=True),
                        "financebench-test-001": Judgment(key="financebench-test-001", kept=True,
                                                          final_answer="1,900", correct=False),
                        "financebench-test-003": Judgment(key="financebench-test-003", kept=False,
                                                          discard_reason="timeout")}
            return [verdicts[i.key] for i in reversed(items)]  # order does not matter: matched by key

    judge = FakeJudge()
    scored, result = run(task, examples, ["Yes, the 737 MAX lawsuits.", "1900", "Yes"], judge)
    assert judge.items[0] == JudgeItem(key="financebench-test-000", question=rows[0]["question"],
                                       reference=rows[0]["answer"], solution="Yes, the 737 MAX lawsuits.")
    assert [(s.prediction, s.unparsable, s.value) for s in scored] == [("Yes", False, 1.0), ("1,900", False, 0.0),
                                                                        (None, True, 0.0)]
    assert result == {"judged_accuracy": pytest.approx(1 / 3)} and task.baseline(examples) == 0.0
    with pytest.raises(ValueError, match="judge"):
        task.score(examples, ["", "", ""], None)


@pytest.mark.parametrize("name,row", [
    ("headline", {"id": "h", "text": "gold up", "labels": {"price_up": 1}}),
    ("ner", {"id": "n", "tokens": ["A", "B"], "tags": ["O"]}),
    ("ner", {"id": "n", "tokens": ["A"], "tags": ["I-XYZ"]}),
    ("cfa_easy", {"id": "c", "choices": ["x", "y", "z"], "answer": "D", "prompt": "Q"}),
    ("financemath", {"id": "f", "question": "q", "tables": "| a |", "answer": 1.0}),
    ("tatqa", {"id": "t", "table": [["a"]], "paragraphs": ["p"], "question": "q", "answer": "x",
               "answer_type": "span", "scale": ""}),
    ("tatqa", {"id": "t", "table": [["a"]], "paragraphs": ["p"], "question": "q", "answer": ["x"],
               "answer_type": "span", "scale": "dozen"}),
    ("convfinqa", {"id": "c", "pre_text": "", "post_text": "", "table": [["a"]], "questions": ["q"],
                   "answers": [], "executed_answers": [1.0]}),
    ("fiqa_qa", {"id": "q", "question": "q"}),
    ("financebench", {"id": "b", "question": "q", "prompt": None, "answer": "a"}),
])
def test_rows_of_the_wrong_schema_raise_key_or_type_errors(name, row):
    with pytest.raises((KeyError, TypeError)):
        get_eval_task(name).examples([row])
