"""ConvFinQA (conversational numerical QA on FinQA documents): rows {id, pre_text, table, post_text, questions,
answers, executed_answers}. The conversation's last question is asked with the earlier turns and their reference
answers as history (ConvFinQA's setting: gold history), zero-shot chain of thought ending in "Answer: <number>",
scored against the executed answer of the last turn."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megafin.eval import metrics
from megafin.eval.answers import extract_answer_text, extract_final_number, extract_label, finqa_equal
from megafin.eval.tasks.base import Example, Scored
from megafin.eval.tasks.prompts import table, user

INSTRUCTION = ("Think step by step, then give the final answer on the last line as \"Answer: <number>\" (a number "
               "only; \"yes\" or \"no\" for a yes/no question).")


def _matches(predicted: Any, gold: Any) -> bool:
    if predicted is None:
        return False
    if isinstance(gold, str):
        return predicted == gold
    return isinstance(predicted, float) and finqa_equal(predicted, gold)


@dataclass(frozen=True)
class ConvFinQaTask:
    """One example per conversation (its last turn: the dev split's 293 conversations; scoring every turn would
    ask each document ~3.7 times). Gold: `executed_answers[-1]` (the program's result: `answers` holds rounded
    strings, some of them wrong, e.g. "1877" for 18770). Prediction: the final number (a percentage as written),
    or yes/no where the gold is yes/no; none is unparsable. Match: answers.finqa_equal (the x100 / /100 and
    rounding leniency of the Program-of-Thoughts ConvFinQA evaluation). Baseline: the most frequent executed
    answer given for every question."""
    name: str = "convfinqa"
    title: str = "ConvFinQA"
    metric: str = "accuracy"
    data_file: str = "convfinqa/dev.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 512
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        out = []
        for row in rows:
            questions, answers, executed = row["questions"], row["answers"], row["executed_answers"]
            if not (isinstance(questions, list) and questions and len(questions) == len(answers) == len(executed)):
                raise TypeError("questions, answers and executed_answers must be lists of one length")
            gold = executed[-1]
            if isinstance(gold, str):
                gold = gold.strip().lower()
                if gold not in ("yes", "no"):
                    raise KeyError(f"executed answer {executed[-1]!r} (expected a number, yes or no)")
            else:
                gold = float(gold)
            history = "".join(f"Q: {q}\nA: {a}\n" for q, a in zip(questions[:-1], answers[:-1]))
            content = (f"{row['pre_text']}\n\n{table(row['table'])}\n\n{row['post_text']}\n\n"
                       + (f"Conversation so far:\n{history}\n" if history else "")
                       + f"Question: {questions[-1]}\n{INSTRUCTION}")
            out.append(Example(id=str(row["id"]), messages=user(content), gold=gold))
        return out

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        scored = []
        for ex, text in zip(examples, outputs, strict=True):
            if isinstance(ex.gold, str):
                prediction = extract_label(extract_answer_text(text) or text, ("yes", "no"))
            else:
                found = extract_final_number(text)
                prediction = None if found is None else found[0]
            scored.append(Scored(prediction=prediction, unparsable=prediction is None,
                                 value=float(_matches(prediction, ex.gold))))
        return scored

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"accuracy": metrics.mean(s.value for s in scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        guess = metrics.majority(ex.gold for ex in examples)
        return metrics.mean(float(_matches(guess, ex.gold)) for ex in examples)


TASK = ConvFinQaTask()
