"""megafin/eval/metrics.py and answers.extract_label on hand-made predictions, against sklearn / rouge_score and
values computed by hand."""
from __future__ import annotations

import pytest

from megafin.eval import metrics
from megafin.eval.answers import extract_answer_text, extract_label, financemath_match, finqa_equal, tatqa_match


def test_weighted_and_macro_f1_equal_sklearn_with_unparsable_answers():
    from sklearn.metrics import f1_score

    gold = ["pos", "neg", "neu", "neu", "pos", "neg", "neu", "pos"]
    predicted = ["pos", "pos", None, "neu", "neg", "neg", "neu", None]
    as_sklearn = [p if p is not None else "missing" for p in predicted]
    assert metrics.weighted_f1(gold, predicted) == pytest.approx(
        f1_score(gold, as_sklearn, average="weighted", zero_division=0), rel=1e-12)
    assert metrics.macro_f1(gold, predicted) == pytest.approx(
        f1_score(gold, as_sklearn, average="macro", labels=sorted(set(gold)), zero_division=0), rel=1e-12)
    assert metrics.binary_f1(gold, predicted, "pos") == pytest.approx(
        f1_score(gold, as_sklearn, labels=["pos"], average="macro", zero_division=0), rel=1e-12)
    assert metrics.accuracy(gold, predicted) == pytest.approx(4 / 8)
    # A class predicted that no gold has adds nothing to the weighted average (sklearn gives it weight 0).
    assert metrics.weighted_f1(["a", "a"], ["a", "b"]) == pytest.approx(
        f1_score(["a", "a"], ["a", "b"], average="weighted", zero_division=0))


def test_majority_is_deterministic_on_ties():
    assert metrics.majority(["b", "a", "a", "b", "c"]) == "b"


def test_extract_label_takes_the_first_whole_word_label():
    labels = ("negative", "neutral", "positive")
    assert extract_label("Answer: Neutral", labels) == "neutral"
    assert extract_label("negative rather than positive", labels) == "negative"
    assert extract_label("positively", labels) is None
    assert extract_label("", labels) is None
    assert extract_label("Yes.", ("yes", "no")) == "yes"
    assert extract_label("Nope", ("yes", "no")) is None


def test_io_entities_join_runs_of_one_type():
    tokens = ["(", "1", ")", "SILICIUM", "DE", "PROVENCE", "of", "France", "Lender", "Borrower", "John", "Paris"]
    tags = ["O", "O", "O", "I-ORG", "I-ORG", "I-ORG", "O", "I-LOC", "I-PER", "I-PER", "I-PER", "I-LOC"]
    assert metrics.io_entities(tokens, tags) == [("SILICIUM DE PROVENCE", "ORG"), ("France", "LOC"),
                                                 ("Lender Borrower John", "PER"), ("Paris", "LOC")]
    assert metrics.io_entities(["a"], ["O"]) == []
    with pytest.raises(TypeError):
        metrics.io_entities(["a", "b"], ["O"])


def test_entity_f1_by_hand():
    gold = [[("A", "PER"), ("B", "ORG")], [("C", "LOC")], [], [("A", "PER"), ("A", "PER")]]
    predicted = [[("A", "PER"), ("B", "PER")], None, [("D", "ORG")], [("A", "PER")]]
    # tp: A (s1), A once (s4) = 2; fp: B/PER, D = 2; fn: B/ORG, C, second A = 3.
    assert metrics.entity_f1(gold, predicted) == pytest.approx(2 * 2 / (2 * 2 + 2 + 3))
    assert metrics.entity_f1(gold, [[] for _ in gold]) == 0.0
    assert metrics.entity_f1(gold, gold) == 1.0


def test_rouge_l_is_rouge_score_with_stemming():
    from rouge_score import rouge_scorer

    ref = "You should probably consult an attorney before dissolving the company."
    pred = "Consult attorneys before the company is dissolved."
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    assert metrics.rouge_l(ref, pred) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < 1.0 and metrics.rouge_l(ref, ref) == pytest.approx(1.0)


def test_extract_answer_text_takes_the_last_answer_line():
    assert extract_answer_text("Answer: 3\nOn reflection...\nAnswer: **$1,568.6 million**.") == "$1,568.6 million"
    assert extract_answer_text("The final answer is Topic 606.") == "Topic 606"
    assert extract_answer_text("no marker here") is None
    assert extract_answer_text("Answer: ") is None


def test_financemath_match_follows_financemath_rules():
    assert financemath_match(-8184.0, -8184.0) and financemath_match(175.2, 175.0)  # within 0.15%
    assert not financemath_match(0.59, 0.578) and not financemath_match(176.0, 175.0)
    assert financemath_match(12.5, 0.125) and financemath_match(57.8, 0.578)  # percent written either way
    assert financemath_match(8184.0, -8184.0)  # FinanceMath does not check the sign there
    assert financemath_match(0.5781, 0.578)  # equal when rounded up to 3 decimals


def test_finqa_equal_rounds_to_the_coarser_number_and_accepts_percent_forms():
    assert finqa_equal(10.83, 10.82621) and finqa_equal(14.0, 14.0)
    assert finqa_equal(-9.7, -0.09709) and finqa_equal(0.1083, 10.83)
    assert not finqa_equal(9.7, -0.09709) and not finqa_equal(10.9, 10.82621)


@pytest.mark.parametrize("text,gold,scale,expected", [
    ("The modified retrospective method.", ["the modified retrospective method"], "", True),
    ("modified retrospective approach", ["the modified retrospective method"], "", False),
    ("$1,568.6 million", ["1,568.6"], "million", True),
    ("1,568.6", ["1,568.6"], "million", False),  # the scale is part of the answer
    ("690.5 and 1,568.6", ["1,568.6", "690.5"], "", True),
    ("17.7%", ["17.7"], "percent", True),
    ("0.177", ["17.7"], "percent", True),
    ("17.7", ["17.7"], "percent", False),
    ("-0.2%", ["-0.2"], "percent", True),
    ("(3.1)", ["-3.1"], "", True),  # accounting negative
    ("2", ["2"], "", True),
    ("$0.5 million", ["$0.5 million"], "", True),
    ("500,000", ["$0.5 million"], "", True),
])
def test_tatqa_match(text, gold, scale, expected):
    assert tatqa_match(text, gold, scale) is expected


def test_extract_choice_and_final_number_as_the_tasks_use_them():
    from megafin.eval.answers import extract_choice, extract_final_number

    assert extract_choice("A is tempting, but Selection: [[B]]") == "B"
    assert extract_choice("The answer is (c).") == "C"
    assert extract_choice("Selection: [[D]]") is None  # not an option
    assert extract_final_number("12 + 30 = 42\nAnswer: $1,234.5") == (1234.5, False)
    assert extract_final_number("Answer: (12)") == (-12.0, False)
    assert extract_final_number("the rate rose to 12.5%") == (12.5, True)
    assert extract_final_number("no digits") is None
