"""Reading answers out of model text and comparing them, shared by the evaluation metrics (megafin/eval/tasks) and
the distillation's rule verifier (megafin/distill), so that "correct" means the same thing in both.

Only plain parsing: nothing here executes model text."""
from __future__ import annotations

import math
import re
import string
from typing import Optional, Sequence

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: FinEval's exact match ignores case and punctuation."""
    return " ".join(text.lower().translate(_PUNCT).split())


_SELECTION = re.compile(r"selection\s*:?\s*\[\[\s*([A-Za-z])\s*\]\]", re.IGNORECASE)
_DOUBLE_BRACKET = re.compile(r"\[\[\s*([A-Za-z])\s*\]\]")
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s*(?:is|:)\s*(?:option\s*)?\(?\s*([A-Za-z])\s*\)?(?![A-Za-z])",
                        re.IGNORECASE)
_LEADING = re.compile(r"^\s*\(?([A-Za-z])\s*[).:]?(?:\s|$)")


def extract_choice(text: str, letters: str = "ABC") -> Optional[str]:
    """The chosen option letter (upper case): "Selection: [[X]]" first, then "[[X]]", then "answer is X" /
    "Answer: (X)" (the last such phrase), then a lone letter opening the text; None if none names one of `letters`."""
    allowed = set(letters.upper())
    for pattern in (_SELECTION, _DOUBLE_BRACKET):
        found = [m.upper() for m in pattern.findall(text) if m.upper() in allowed]
        if found:
            return found[-1]
    found = [m.upper() for m in _ANSWER_IS.findall(text) if m.upper() in allowed]
    if found:
        return found[-1]
    m = _LEADING.match(text)
    if m and m.group(1).upper() in allowed:
        return m.group(1).upper()
    return None


_NUMBER = re.compile(r"\(?-?\$?\s*\d[\d,]*(?:\.\d+)?|\(?-?\$?\s*\.\d+")
_FINAL_MARKERS = (re.compile(r"\\boxed\{([^{}]*)\}"),
                  re.compile(r"final answer\s*(?:is|:)?\s*([^\n]*)", re.IGNORECASE),
                  re.compile(r"(?:^|\n)\s*answer\s*(?:is|:)\s*([^\n]*)", re.IGNORECASE),
                  re.compile(r"the answer is\s*([^\n]*)", re.IGNORECASE))


def parse_number(text: str) -> Optional[tuple[float, bool]]:
    """The first number in `text` as (value, is_percent): "$1,234.5" -> 1234.5, "(12)" -> -12 (accounting
    negative), "-3.5%" -> (-3.5, True); None if there is none."""
    m = _NUMBER.search(text)
    if not m:
        return None
    raw = m.group(0)
    negative = raw.lstrip().startswith(("-", "(")) and (not raw.startswith("(") or ")" in text[m.end():m.end() + 2])
    digits = raw.replace("(", "").replace("-", "").replace("$", "").replace(",", "").strip()
    try:
        value = float(digits)
    except ValueError:
        return None
    rest = text[m.end():m.end() + 3].lstrip(" )")
    return (-value if negative else value), rest.startswith("%")


def extract_final_number(text: str) -> Optional[tuple[float, bool]]:
    """The final numeric answer of a worked solution: after "\\boxed{", "final answer", "Answer:" or "the answer
    is" (the last occurrence), else the last number in the text; None if the text has no number."""
    for pattern in _FINAL_MARKERS:
        hits = pattern.findall(text)
        for hit in reversed(hits):
            parsed = parse_number(hit)
            if parsed is not None:
                return parsed
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    return parse_number(text[numbers[-1].start():])


def numbers_match(predicted: float, gold: float, rel_tol: float = 1e-2, abs_tol: float = 1e-6,
                  percent_equivalent: bool = True) -> bool:
    """Equal within a relative tolerance; with `percent_equivalent`, 0.125 and 12.5 (a rate written as a fraction
    or as a percentage) also match, since reference answers use both."""
    candidates = [predicted]
    if percent_equivalent:
        candidates += [predicted * 100, predicted / 100]
    return any(math.isclose(c, gold, rel_tol=rel_tol, abs_tol=abs_tol) for c in candidates)


def extract_label(text: str, labels: Sequence[str]) -> Optional[str]:
    """The label (as given in `labels`) that the text names first as a whole word, case ignored: "Positive." and
    "The sentiment is positive" -> "positive"; None if it names none. Earliest wins, so "negative, not positive"
    is negative; a label that is part of a longer word ("negatively") does not count."""
    best: Optional[tuple[int, str]] = None
    for label in labels:
        m = re.search(rf"(?<![A-Za-z]){re.escape(label)}(?![A-Za-z])", text, re.IGNORECASE)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    return best[1] if best else None
