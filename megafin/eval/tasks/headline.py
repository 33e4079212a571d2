"""Gold news headlines: rows {id, text, labels: {price_up: 0|1, ...}}, each label asked as one yes/no question
(FinGPT/FinBen's "Headline" task), scored by the F1 of each label's answers averaged over the six labels.

Training (`record`) asks one question per row, rotating over the labels by row position, so one pass over the
train split covers every label without repeating a headline six times. Evaluation asks all six questions of
every headline: each label is then scored on the whole test split (rotation would leave each label a sixth of
it, ~250 headlines, and the rare labels, price_constant at 5% and future_information at 3%, a dozen positives),
at the price of six short direct-answer prompts per headline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_label
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user

QUESTIONS = {
    "price_up": "Does the news headline talk about price going up?",
    "price_constant": "Does the news headline talk about price staying constant?",
    "price_down": "Does the news headline talk about price going down?",
    "past_information": "Does the news headline talk about a past price or event?",
    "future_information": "Does the news headline talk about a future price or event?",
    "asset_comparison": "Does the news headline compare gold with any other asset?",
}
ANSWERS = ("yes", "no")


def prompt(label: str, text: str) -> str:
    return f"{QUESTIONS[label]} Answer Yes or No.\nInput: {text}\nAnswer:"


@dataclass(frozen=True)
class HeadlineTask:
    """Prediction: the first of yes/no the answer names; neither is unparsable. Metric: per label, the weighted F1
    of its yes/no answers (PIXIU/FinBen score each question type as a classification), averaged over the labels;
    accuracy over all questions besides. Baseline: each label's majority answer, scored the same way."""
    name: str = "headline"
    title: str = "headlines"
    family: str = "classification"
    metric: str = "avg_f1"
    data_file: str = "headline/test.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 4
    needs_judge: bool = False

    def record(self, row: dict, k: int) -> dict:
        """The question is chosen by the row's position k (deterministic), rotating over the six labels."""
        keys = list(QUESTIONS)
        key = keys[k % len(keys)]
        answer = "Yes" if row["labels"][key] == 1 else "No"
        return {"prompt": prompt(key, row["text"]), "response": answer}

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            for key in QUESTIONS:
                value = row["labels"][key]
                if value not in (0, 1):
                    raise TypeError(f"labels.{key} is {value!r}, expected 0 or 1")
                out.append(Example(id=f"{row['id']}:{key}", messages=user(prompt(key, row["text"])),
                                   gold="yes" if value == 1 else "no", meta={"label": key}))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            answer = extract_label(text, ANSWERS)
            scored.append(Scored(prediction=answer, unparsable=answer is None, value=float(answer == ex.gold)))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"avg_f1": _avg_label_f1(examples, [s.prediction for s in scored]),
                "accuracy": metrics.accuracy([ex.gold for ex in examples], [s.prediction for s in scored])}

    def baseline(self, examples: Sequence[Example]) -> float:
        majority = {key: metrics.majority(ex.gold for ex in examples if ex.meta["label"] == key)
                    for key in {ex.meta["label"] for ex in examples}}
        return _avg_label_f1(examples, [majority[ex.meta["label"]] for ex in examples])


def _avg_label_f1(examples: Sequence[Example], predicted: Sequence[Optional[str]]) -> float:
    by_label: dict[str, tuple[list, list]] = {}
    for ex, p in zip(examples, predicted, strict=True):
        gold, pred = by_label.setdefault(ex.meta["label"], ([], []))
        gold.append(ex.gold)
        pred.append(p)
    return metrics.mean(metrics.weighted_f1(g, p) for g, p in by_label.values())


TASK = HeadlineTask()
