"""FiQA 2018 task 2 (opinion QA: a personal-finance question and a StackExchange answer): rows {id, question,
answer}, answered directly, scored by ROUGE-L against the reference answer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user

INSTRUCTION = "Answer this question from a personal finance forum in a short paragraph."


@dataclass(frozen=True)
class FiqaQaTask:
    """Prediction: the whole output (stripped); an empty one is unparsable (ROUGE-L 0). Metric: mean ROUGE-L
    F-measure (metrics.rouge_l, as lm-eval computes it). Baseline: answering with the question itself (the ROUGE-L
    an echo of the prompt gets: an answer must beat the words it was given)."""
    name: str = "fiqa_qa"
    title: str = "FiQA-QA"
    metric: str = "rouge_l"
    data_file: str = "fiqa_qa/test.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 256
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            question, answer = row["question"], row["answer"]
            if not isinstance(question, str) or not isinstance(answer, str):
                raise TypeError("question and answer must be text")
            out.append(Example(id=str(row["id"]), messages=user(f"{INSTRUCTION}\nQuestion: {question}\nAnswer:"),
                               gold=answer, meta={"question": question}))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            answer = text.strip()
            scored.append(Scored(prediction=answer or None, unparsable=not answer,
                                 value=metrics.rouge_l(ex.gold, answer) if answer else 0.0))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"rouge_l": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        return metrics.mean(metrics.rouge_l(ex.gold, ex.meta["question"]) for ex in examples)


TASK = FiqaQaTask()
