"""The judge's answer (untrusted model text) -> the fields of a Judgment, or exactly one discard reason.

Checks, in order (the first that fails names the reason):
1. refusal: the server's finish_reason is content_filter, or the message carries a refusal, or the text has no
   JSON object and opens like a refusal ("I'm sorry", "I cannot", ...).
2. unparsable: no JSON object in the text. The object may sit in a ```json fence or among prose; the first JSON
   object in the text that has a "final_answer" or "correct" key is taken (else the first object at all, which
   then fails the schema). Texts over MAX_TEXT_CHARS are not searched.
3. schema: "final_answer" missing or not a string / number / null.
4. no_final_answer: "final_answer" null or blank.
5. schema: "correct" not a boolean; "score" (optional) not a number in [0, 1]; with a process template and
   correct false: "first_wrong_step" and "correction" not non-empty strings, "correct_prefix" not a string
   ("" is allowed: the first step itself may be wrong).
6. quote_not_found: a quote is not a verbatim substring of the solution, after stripping whitespace from the
   quote's two ends only (nothing else is normalised: case, inner spaces, punctuation must match), or the
   correct prefix does not end before the first wrong step begins.
Extra keys are ignored; nothing in the text is executed."""
from __future__ import annotations

import json
import re
from typing import Any, Optional

MAX_TEXT_CHARS = 200_000
MAX_OBJECT_TRIES = 64  # "{" positions tried as the start of a JSON object (bounds the work on hostile text)
_DECODER = json.JSONDecoder()
_REFUSAL = re.compile(r"^\W*(i['’]?m sorry|i am sorry|sorry\b|i can(?:no|['’])t|i cannot|i am unable|"
                      r"i['’]?m unable|i won['’]?t|i will not|as an ai\b|unfortunately,? i can)", re.IGNORECASE)
OUTCOME_KEYS = ("final_answer", "correct")


def empty_fields() -> dict[str, Any]:
    return dict(kept=False, discard_reason=None, final_answer=None, correct=None, reward=None,
                first_wrong_step=None, correct_prefix=None, correction=None)


def discard(reason: str) -> dict[str, Any]:
    fields = empty_fields()
    fields["discard_reason"] = reason
    return fields


def find_json_object(text: str) -> Optional[dict]:
    """The first JSON object in the text with an outcome key, else the first JSON object, else None."""
    if len(text) > MAX_TEXT_CHARS:
        return None
    first = None
    start = text.find("{")
    for _ in range(MAX_OBJECT_TRIES):
        if start < 0:
            break
        try:
            obj, _end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            if any(k in obj for k in OUTCOME_KEYS):
                return obj
            first = obj if first is None else first
        start = text.find("{", start + 1)
    return first


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quote(value: str, solution: str) -> Optional[str]:
    """The quote stripped of whitespace at its ends, if it is then a verbatim substring of the solution."""
    quote = value.strip()
    return quote if quote in solution else None


def parse_judgment(text: Optional[str], solution: str, process: bool, finish_reason: Optional[str] = None,
                   refusal: Optional[str] = None) -> dict[str, Any]:
    """Judgment fields (everything but key / cached) from one judge answer. `process`: the template asks for the
    process fields (template.JudgeTemplate.process)."""
    text = text or ""
    if finish_reason == "content_filter" or (refusal and refusal.strip()):
        return discard("refusal")
    obj = find_json_object(text)
    if obj is None:
        return discard("refusal" if _REFUSAL.match(text) else "unparsable")

    if "final_answer" not in obj:
        return discard("schema")
    answer = obj["final_answer"]
    if answer is not None and not isinstance(answer, str) and not _is_number(answer):
        return discard("schema")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return discard("no_final_answer")
    correct, score = obj.get("correct"), obj.get("score")
    if not isinstance(correct, bool):
        return discard("schema")
    if score is not None and not (_is_number(score) and 0.0 <= float(score) <= 1.0):
        return discard("schema")

    fields = empty_fields()
    fields.update(kept=True, final_answer=answer.strip() if isinstance(answer, str) else json.dumps(answer),
                  correct=correct, reward=None if score is None else float(score))
    if not process or correct:
        return fields
    step, prefix, correction = obj.get("first_wrong_step"), obj.get("correct_prefix"), obj.get("correction")
    if not (isinstance(step, str) and step.strip() and isinstance(prefix, str)
            and isinstance(correction, str) and correction.strip()):
        return discard("schema")
    step_q, prefix_q = _quote(step, solution), _quote(prefix, solution)
    if step_q is None or prefix_q is None:
        return discard("quote_not_found")
    # The prefix is the reasoning before the wrong step: some occurrence of it ends where the step may begin.
    if prefix_q and solution.find(prefix_q) + len(prefix_q) > solution.rfind(step_q):
        return discard("quote_not_found")
    fields.update(first_wrong_step=step_q, correct_prefix=prefix_q, correction=correction.strip())
    return fields
