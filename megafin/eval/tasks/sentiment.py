"""Financial sentiment classification: FPB, FiQA-SA and TFNS rows {id, text, label}, asked as FinGPT/FinDAP ask
them (a direct answer), scored by accuracy (FinDAP's metric) and weighted F1 (PIXIU/FinBen's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_label
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user

QUESTION = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."
LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class SentimentTask:
    """Prediction: the first of the three labels the answer names (answers.extract_label); none named is
    unparsable. Baseline: the majority class's accuracy on the same examples."""
    name: str
    title: str
    fineval_config: Optional[str] = None
    family: str = "classification"
    metric: str = "accuracy"
    max_new_tokens: int = 8
    needs_judge: bool = False

    @property
    def data_file(self) -> str:
        return f"{self.name}/test.jsonl"

    def record(self, row: dict, k: int) -> dict:
        return {"prompt": f"{QUESTION}\nInput: {row['text']}\nAnswer:", "response": row["label"]}

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for k, row in enumerate(rows):
            rec = self.record(row, k)
            gold = rec["response"].strip().lower()
            if gold not in LABELS:
                raise KeyError(f"label {rec['response']!r} (expected one of {', '.join(LABELS)})")
            out.append(Example(id=str(row["id"]), messages=user(rec["prompt"]), gold=gold))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            label = extract_label(text, LABELS)
            scored.append(Scored(prediction=label, unparsable=label is None, value=float(label == ex.gold)))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        gold = [ex.gold for ex in examples]
        predicted = [s.prediction for s in scored]
        # macro F1 besides: it is blind to the class prior, so a model that only learned a source's majority label
        # (the FiQA-SA and TFNS test priors differ from any training split's) cannot raise it.
        return {"accuracy": metrics.accuracy(gold, predicted), "weighted_f1": metrics.weighted_f1(gold, predicted),
                "macro_f1": metrics.macro_f1(gold, predicted)}

    def baseline(self, examples: Sequence[Example]) -> float:
        gold = [ex.gold for ex in examples]
        return metrics.accuracy(gold, [metrics.majority(gold)] * len(gold))


TASKS = (SentimentTask("fpb", "FPB", "FPB"), SentimentTask("fiqa_sa", "FiQA-SA", "FIQASA"),
         SentimentTask("tfns", "TFNS"))
