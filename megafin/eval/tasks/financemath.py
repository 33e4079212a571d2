"""FinanceMath (knowledge-intensive financial math word problems): rows {id, question, tables, answer: float},
asked with zero-shot chain of thought ending in "Answer: <number>", scored by FinanceMath's own numeric match."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_final_number, financemath_match
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import COT_NUMBER, user


@dataclass(frozen=True)
class FinanceMathTask:
    """Prediction: the final number of the solution (answers.extract_final_number: after the last "Answer:",
    else the last number; a percent sign is dropped, as FinanceMath's normalizer drops it). Unparsable: no number
    at all. Match: answers.financemath_match (0.15% relative; scale and sign leniency as FinanceMath's scorer).
    Baseline: the most frequent gold answer given for every question."""
    name: str = "financemath"
    title: str = "FinanceMath"
    metric: str = "accuracy"
    data_file: str = "financemath/validation.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 512
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            tables = row["tables"]
            if not isinstance(tables, list):
                raise TypeError("tables must be a list of markdown tables")
            context = "".join(f"{t}\n\n" for t in tables)
            content = f"{context}Question: {row['question']}\n{COT_NUMBER}"
            out.append(Example(id=str(row["id"]), messages=user(content), gold=float(row["answer"])))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            found = extract_final_number(text)
            value = None if found is None else found[0]
            scored.append(Scored(prediction=value, unparsable=value is None,
                                 value=float(value is not None and financemath_match(value, ex.gold))))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"accuracy": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        guess = metrics.majority(ex.gold for ex in examples)
        return metrics.mean(float(financemath_match(guess, ex.gold)) for ex in examples)


TASK = FinanceMathTask()
