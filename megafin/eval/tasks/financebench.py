"""FinanceBench (open-book QA over 10-K pages, FinLoRA's processing): rows {id, question, prompt, answer}, asked
with the row's prompt (instruction, question and the pages' text), judged correct or not against the reference
answer by the generative judge (megafin/distill/judge, template "outcome")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.distill.judge.api import JudgeItem
from megafin.eval import metrics
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user


@dataclass(frozen=True)
class FinanceBenchTask:
    """Score: the judge's outcome (`Judgment.correct`), 1 or 0. A judgment the judge client discarded (its answer
    unparsable, a timeout, ...: Judgment.discard_reason) counts as unparsable and wrong, so every example stays
    in the denominator. Baseline: 0 (an empty answer is never judged correct; a trivial answer has no cheaper
    judged score than asking the judge)."""
    name: str = "financebench"
    title: str = "FinanceBench"
    metric: str = "judged_accuracy"
    data_file: str = "financebench/test.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 256
    needs_judge: bool = True

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            prompt, question, answer = row["prompt"], row["question"], row["answer"]
            if not all(isinstance(v, str) for v in (prompt, question, answer)):
                raise TypeError("prompt, question and answer must be text")
            out.append(Example(id=str(row["id"]), messages=user(prompt), gold=answer, meta={"question": question}))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        """`judge`: a JudgeClient (or anything with its judge(items) -> list[Judgment]) opened with the "outcome"
        template."""
        if judge is None:
            raise ValueError("financebench is scored by a judge; none was given")
        items = [JudgeItem(key=ex.id, question=ex.meta["question"], reference=ex.gold, solution=text)
                 for ex, text in zip(examples, outputs, strict=True)]
        judgments = {j.key: j for j in judge.judge(items)}
        scored = []
        for ex in examples:
            j = judgments.get(ex.id)
            if j is None or not j.kept or j.correct is None:
                scored.append(Scored(prediction=None, unparsable=True, value=0.0))
            else:
                scored.append(Scored(prediction=j.final_answer, unparsable=False, value=float(j.correct)))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"judged_accuracy": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        return 0.0


TASK = FinanceBenchTask()
