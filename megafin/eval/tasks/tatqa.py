"""TAT-QA (hybrid table + text QA over annual reports): rows {id, table, paragraphs, question, answer, answer_type,
scale}, asked with zero-shot chain of thought ending in "Answer: <answer>", scored by TAT-QA's exact match with
scale (answers.tatqa_match)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_answer_text, tatqa_answer_string, tatqa_gold_answers, tatqa_match, \
    tatqa_normalize
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import table, user

ANSWER_TYPES = ("span", "multi-span", "arithmetic", "count")
SCALES = ("", "thousand", "million", "billion", "percent")
INSTRUCTION = (
    "Think step by step, then give the final answer on the last line as \"Answer: <answer>\". Write an amount with "
    "the scale the document uses (thousand, million or billion) or a % sign for a percentage, e.g. \"Answer: 1,234.5 "
    "million\"; write several answers separated by \"; \".")


@dataclass(frozen=True)
class TatQaTask:
    """Prediction: the text of the last "Answer:" line (answers.extract_answer_text); none is unparsable. Match:
    TAT-QA's exact match, numbers as value x scale, so the scale must be stated as the gold scale implies.
    Baseline: the most frequent gold answer (as TAT-QA compares answers) given for every question."""
    name: str = "tatqa"
    title: str = "TAT-QA"
    metric: str = "exact_match"
    data_file: str = "tatqa/test.jsonl"
    fineval_config: Optional[str] = "Flare-TATQA"
    max_new_tokens: int = 512
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            answer_type, scale = row["answer_type"], row["scale"]
            if answer_type not in ANSWER_TYPES or scale not in SCALES:
                raise KeyError(f"answer_type {answer_type!r} / scale {scale!r} (expected one of "
                               f"{', '.join(ANSWER_TYPES)} / {', '.join(repr(s) for s in SCALES)})")
            paragraphs = row["paragraphs"]
            if not isinstance(paragraphs, list):
                raise TypeError("paragraphs must be a list of strings")
            content = (f"Table:\n{table(row['table'])}\n\nText:\n" + "\n".join(str(p) for p in paragraphs) +
                       f"\n\nQuestion: {row['question']}\n{INSTRUCTION}")
            out.append(Example(id=str(row["id"]), messages=user(content),
                               gold=tatqa_gold_answers(row["answer"], answer_type),
                               meta={"scale": scale, "answer_type": answer_type}))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            answer = extract_answer_text(text)
            ok = answer is not None and tatqa_match(answer, ex.gold, ex.meta["scale"])
            scored.append(Scored(prediction=answer, unparsable=answer is None, value=float(ok)))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"exact_match": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        targets = Counter(tatqa_normalize(tatqa_answer_string(ex.gold, ex.meta["scale"])) for ex in examples)
        return targets.most_common(1)[0][1] / len(examples) if examples else 0.0


TASK = TatQaTask()
