"""The evaluation metrics, as plain functions over gold and predicted answers (tasks/ picks which one each task
reports). An unparsable prediction is passed as None: it is a wrong answer, never a skipped one.

Classification F1s follow sklearn.metrics.f1_score (zero_division=0) without importing it at evaluation time;
the tests compare against sklearn itself."""
from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Iterable, Optional, Sequence


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def accuracy(gold: Sequence[Hashable], predicted: Sequence[Optional[Hashable]]) -> float:
    return mean(float(p is not None and p == g) for g, p in zip(gold, predicted, strict=True))


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def per_class_f1(gold: Sequence[Hashable], predicted: Sequence[Optional[Hashable]]) -> dict[Hashable, float]:
    """F1 of each gold class (one-vs-rest); None predictions count as a miss of the gold class."""
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for g, p in zip(gold, predicted, strict=True):
        if p == g:
            tp[g] += 1
        else:
            fn[g] += 1
            if p is not None:
                fp[p] += 1
    return {c: _f1(tp[c], fp[c], fn[c]) for c in sorted(set(gold), key=str)}


def weighted_f1(gold: Sequence[Hashable], predicted: Sequence[Optional[Hashable]]) -> float:
    """Per-class F1 weighted by gold support: sklearn's f1_score(average="weighted") with an unparsable answer as a
    label of its own that no gold has (so it costs recall, and adds no class)."""
    support = Counter(gold)
    if not support:
        return 0.0
    return sum(f * support[c] for c, f in per_class_f1(gold, predicted).items()) / len(gold)


def macro_f1(gold: Sequence[Hashable], predicted: Sequence[Optional[Hashable]]) -> float:
    """Unweighted mean of the gold classes' F1 (sklearn's average="macro" over the gold labels)."""
    scores = per_class_f1(gold, predicted)
    return mean(scores.values())


def binary_f1(gold: Sequence[Hashable], predicted: Sequence[Optional[Hashable]], positive: Hashable) -> float:
    """F1 of the `positive` class alone (sklearn's average="binary", zero_division=0)."""
    tp = sum(g == positive and p == positive for g, p in zip(gold, predicted, strict=True))
    fp = sum(g != positive and p == positive for g, p in zip(gold, predicted))
    fn = sum(g == positive and p != positive for g, p in zip(gold, predicted))
    return _f1(tp, fp, fn)


def io_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """Entities of an IO-tagged sentence as (text, type): a run of consecutive tokens of the same I-TYPE is one
    entity (IO has no B- tag, so two adjacent entities of one type merge, as in the dataset's own CoNLL use)."""
    if len(tokens) != len(tags):
        raise TypeError(f"{len(tokens)} tokens but {len(tags)} tags")
    entities: list[tuple[str, str]] = []
    run: list[str] = []
    run_type: Optional[str] = None
    for token, tag in zip(tokens, tags):
        kind = tag[2:] if tag.startswith(("I-", "B-")) else None
        if kind != run_type and run:
            entities.append((" ".join(run), run_type))
            run = []
        if kind is not None:
            run.append(token)
        run_type = kind
    if run:
        entities.append((" ".join(run), run_type))
    return entities


def entity_f1(gold: Sequence[Sequence[tuple[str, str]]], predicted: Sequence[Optional[Sequence[tuple[str, str]]]],
              key=lambda e: e) -> float:
    """Micro entity-level F1 over all sentences: an entity counts as found when `key` of a predicted (text, type)
    equals `key` of a gold one (multiset match per sentence); None predictions are no entities. Predicting no
    entities anywhere scores 0."""
    tp = fp = fn = 0
    for g, p in zip(gold, predicted, strict=True):
        gold_set = Counter(key(e) for e in g)
        pred_set = Counter(key(e) for e in (p or ()))
        hit = sum((gold_set & pred_set).values())
        tp += hit
        fp += sum(pred_set.values()) - hit
        fn += sum(gold_set.values()) - hit
    return _f1(tp, fp, fn)


_ROUGE = None


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure with the Porter stemmer, as lm-eval's summarization tasks compute it
    (rouge_score.RougeScorer(["rougeL"], use_stemmer=True), averaged over examples by the caller)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def majority(values: Iterable[Any]) -> Any:
    """The most frequent value (the first seen among ties, so the choice is deterministic)."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in counts if counts[v] == best)
