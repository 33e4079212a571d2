"""CFA exam multiple choice (FinDAP's FinEval CFA-Easy and CFA-Challenge): rows {id, question, choices, answer,
prompt}, asked with the FinEval query (`prompt`) and zero-shot chain of thought ending in "Selection: [[X]]" as
FinEval asks it, scored by accuracy."""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_choice
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import user

_TRAILING_ANSWER = re.compile(r"\s*Answer:\s*$")
_SHORT_ANSWER_WORDS = 8


@dataclass(frozen=True)
class CfaTask:
    """Prediction: the chosen letter (answers.extract_choice: "Selection: [[X]]" first, then other phrasings; an
    opening letter only in an answer of at most 8 words); none of the row's letters found is unparsable. Baseline: random choice, 1/len(choices) per question (1/3)."""
    name: str
    title: str
    data_file: str
    fineval_config: Optional[str]
    metric: str = "accuracy"
    max_new_tokens: int = 512
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            letters = string.ascii_uppercase[:len(row["choices"])]
            gold = row["answer"].strip().upper()
            if gold not in letters:
                raise KeyError(f"answer {row['answer']!r} (expected one of {', '.join(letters)})")
            query = _TRAILING_ANSWER.sub("", row["prompt"])
            content = (f"{query}\nThink step by step, then give your choice on the last line as "
                       f"\"Selection: [[X]]\", where X is one of {', '.join(letters)}.")
            out.append(Example(id=str(row["id"]), messages=user(content), gold=gold, meta={"letters": letters}))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            # A lone opening letter is a choice only in a short answer ("B", "B. liquidity."): a reasoning that
            # opens with the article ("A premium for ...") is not choosing A.
            letter = extract_choice(text, ex.meta["letters"], leading=len(text.split()) <= _SHORT_ANSWER_WORDS)
            scored.append(Scored(prediction=letter, unparsable=letter is None, value=float(letter == ex.gold)))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"accuracy": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        return metrics.mean(1 / len(ex.meta["letters"]) for ex in examples)


TASKS = (CfaTask("cfa_easy", "CFA-Easy", "cfa/cfa_easy_test.jsonl", "CFA-Easy"),
         CfaTask("cfa_challenge", "CFA-Challenge", "cfa/cfa_challenge_test.jsonl", "CFA-Challenge"))
