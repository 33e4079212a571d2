"""megafin/eval/metrics.py and answers.extract_label on hand-made predictions, against sklearn / rouge_score and
values computed by hand."""
from __future__ import annotations

import pytest

from megafin.eval import metrics
from megafin.eval.answers import extract_label


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
