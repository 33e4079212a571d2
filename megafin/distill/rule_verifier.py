"""The rule verifier: is a solution's final answer the reference, decided without a model, with the parsing the
evaluation metrics use (megafin/eval/answers.py), so that "correct" means the same in distillation and evaluation.

It decides numbers (within a relative tolerance; a rate written as a fraction or a percentage matches either way; a
reference with a scale such as "million" matches the bare number or the number times the scale) and option letters.
Text answers (TAT-QA spans) it leaves to the judge: None. A solution with no number (or no letter) where one is
expected is wrong."""
from __future__ import annotations

from typing import Optional

from megafin.eval.answers import extract_choice, extract_final_number, numbers_match

SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9}
LETTERS = "ABCDEFGHIJ"


def verify(solution: str, answer: dict, rel_tol: float = 1e-2) -> Optional[bool]:
    """True / False when the reference can be checked by rule, None when it cannot (text answers)."""
    kind = answer.get("kind")
    if kind == "choice":
        return extract_choice(solution, LETTERS) == answer["value"]
    if kind == "number":
        found = extract_final_number(solution)
        if found is None:
            return False
        predicted, _ = found
        gold = float(answer["value"])
        candidates = [gold]
        if answer.get("scale") in SCALES:
            candidates.append(gold * SCALES[answer["scale"]])
        return any(numbers_match(predicted, g, rel_tol=rel_tol) for g in candidates)
    return None
