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


def extract_choice(text: str, letters: str = "ABC", leading: bool = True) -> Optional[str]:
    """The chosen option letter (upper case): "Selection: [[X]]" first, then "[[X]]", then "answer is X" /
    "Answer: (X)" (the last such phrase), then (with `leading`) a lone letter opening the text; None if none names
    one of `letters`."""
    allowed = set(letters.upper())
    for pattern in (_SELECTION, _DOUBLE_BRACKET):
        found = [m.upper() for m in pattern.findall(text) if m.upper() in allowed]
        if found:
            return found[-1]
    found = [m.upper() for m in _ANSWER_IS.findall(text) if m.upper() in allowed]
    if found:
        return found[-1]
    m = _LEADING.match(text) if leading else None
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


_ANSWER_LINE = re.compile(r"(?:final answer|(?:^|\n)\s*answer)\s*(?:is|:)\s*([^\n]*)", re.IGNORECASE)


def extract_answer_text(text: str) -> Optional[str]:
    """The text of the last "Answer: ..." (or "final answer is ...") line, stripped of surrounding space, quotes,
    markdown bold and a closing period; None if the text has no such line or it is empty."""
    hits = [re.sub(r"^[\s*`\"']+|[\s*`\"'.]+$", "", h) for h in _ANSWER_LINE.findall(text)]
    hits = [h for h in hits if h]
    return hits[-1] if hits else None


# ----------------------------------------------------------------------------------------------------- FinanceMath
def _ceil_to(number: float, decimals: int) -> float:
    factor = 10 ** decimals
    return math.ceil(number * factor) / factor


def financemath_match(predicted: float, gold: float) -> bool:
    """FinanceMath's own comparison (yale-nlp/FinanceMath utils/evaluation_utils.compare_two_numbers): within 0.15%
    relative; or the magnitudes equal up to an exact power of ten, a percent/thousand/hundred-thousand scaling
    within 0.15%, or the same when rounded up to 3 decimals. As there, the sign is not checked in the scale
    branches, so -8184 matches 8184."""
    def within(p: float, g: float) -> bool:
        eps = abs(g) * 0.0015
        return g - eps <= p <= g + eps

    v1, v2 = max(abs(gold), abs(predicted)), min(abs(gold), abs(predicted))
    if v1 != 0 and v2 != 0:
        ratio = math.log10(v1 / v2)
        if int(ratio) == ratio:
            return True
    if v2 <= v1 / 50 and within(v2 * 100, v1):
        return True
    if v2 <= v1 / 500 and within(v2 * 1000, v1):
        return True
    if v2 <= v1 / 50000 and within(v2 * 100000, v1):
        return True
    if _ceil_to(v1, 3) == _ceil_to(v2, 3):
        return True
    return within(predicted, gold)


# ------------------------------------------------------------------------------------------------------ ConvFinQA
def _decimals(x: float) -> int:
    s = repr(float(x))
    return len(s.split(".")[-1]) if "." in s and "e" not in s else 5


def finqa_equal(predicted: float, gold: float, rel_tol: float = 1e-3) -> bool:
    """ConvFinQA/FinQA executed-answer match as the Program-of-Thoughts evaluation scores it with --relaxed
    --tolerance (TIGER-AI-Lab/Program-of-Thoughts tool.finqa_equal): the gold value, x100 or /100 (a rate as a
    fraction or a percentage), equal within `rel_tol` relative or after rounding both to the fewer decimals of the
    two (so 10.83 matches 10.82621)."""
    for g in (gold, gold * 100, gold / 100):
        if math.isclose(predicted, g, rel_tol=rel_tol):
            return True
        digits = min(_decimals(predicted), _decimals(g))
        if round(predicted, digits) == round(g, digits):
            return True
    return False


# --------------------------------------------------------------------------------------------------------- TAT-QA
# TAT-QA's exact match (NExTplusplus/TAT-QA tatqa_metric.py + tatqa_utils.py), reimplemented: numbers compare as
# their value times the scale (thousand/million/billion/percent), so "1,568.6" with the gold scale "million" is
# matched by "1,568.6 million" and not by a bare "1,568.6".
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1000000, "billion": 1000000000, "percent": 0.01}
_NOT_IN_NUMBER = set("'\"\\$€£¥%(),[]")


def _scale_value(scale: str) -> float:
    scale = scale.lower()
    return next((v for k, v in _SCALES.items() if k in scale), 1)


def _clean_number(text: str) -> str:
    return "".join(ch for ch in str(text) if ch not in _NOT_IN_NUMBER)


def _tatqa_is_number(text: str) -> bool:
    words = " ".join(_clean_number(w) for w in text.split()).split()
    if not words:
        return False
    try:
        num = float(words[0])
    except ValueError:
        return False
    if math.isnan(num):
        return False
    return len(words) < 2 or _scale_value(words[1]) != 1


def _tatqa_to_number(text: str) -> Optional[float]:
    groups = re.findall(r"([+-]?\d+(\.\d+)?)|([+-]?\.\d+)", _clean_number(text))
    if not groups or not groups[-1][0]:
        return None
    num = float(groups[-1][0])
    scaled = re.search(r"[\d.]+\s?[a-zA-Z]+", text)
    scale = _scale_value(scaled.group(0)) if scaled else 1
    negative = -1 if re.search(r"\([\d.\s]+\)", text.strip()) else 1
    percent = 0.01 if re.search(r"[\d.\s]+%", text.strip()) else 1
    return round(num * scale * negative * percent, 4)


def tatqa_normalize(text: str) -> str:
    """TAT-QA's normalize_answer: per space-separated token, lower case, punctuation removed (not from numbers),
    numbers as their value, articles dropped; whitespace collapsed."""
    parts = []
    for token in text.split(" "):
        token = token.lower()
        if not _tatqa_is_number(token):
            token = "".join(ch for ch in token if ch not in string.punctuation)
        if _tatqa_is_number(token):
            token = str(_tatqa_to_number(token))
        token = " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())
        if token.strip():
            parts.append(token)
    return " ".join(parts).strip()


def tatqa_answer_string(answers: Sequence, scale: str) -> str:
    """TAT-QA's get_answer_str: each answer a number times the scale ("%.4f") or its text plus the scale word,
    sorted and joined (sorted after conversion here, so "1568.6; 690.5" and "690.5; 1,568.6" compare equal)."""
    out = []
    for ans in answers:
        ans = str(ans)
        num = _tatqa_to_number(ans) if _tatqa_is_number(ans) else None
        if num is None:
            out.append(f"{ans} {scale}" if scale else ans)
        elif "%" in ans:
            out.append("%.4f" % num)
        else:
            out.append("%.4f" % (round(num, 2) * _scale_value(scale)))
    return " ".join(sorted(out))


def tatqa_gold_answers(answer, answer_type: str) -> list[str]:
    """The gold answer(s) of a TAT-QA row as strings (TAT-QA's extract_gold_answers)."""
    if answer_type in ("span", "multi-span"):
        if not isinstance(answer, list):
            raise TypeError(f"a {answer_type} answer is a list, got {type(answer).__name__}")
        return [str(a) for a in answer]
    if answer_type == "count":
        return [str(int(answer))]
    return [str(answer)]


_SCALE_WORD = re.compile(r"\s*\b(thousand|million|billion|percent)s?\b\.?", re.IGNORECASE)


def _split_scale(spans: list[str]) -> tuple[list[str], str]:
    """The spans without their scale word, and the scale they name ("" if none): what TAT-QA's model predicts as
    a separate (answer, scale) pair, read here from the answer text."""
    scales = {m.group(1).lower() for s in spans for m in _SCALE_WORD.finditer(s)}
    if len(scales) != 1:
        return spans, ""
    return [_SCALE_WORD.sub("", s).strip() for s in spans], scales.pop()


def tatqa_match(answer_text: str, gold: Sequence[str], scale: str) -> bool:
    """Exact match of a model's answer text with TAT-QA gold answers and scale, as TAT-QA scores a predicted
    (answer, scale): the scale is the scale word the text names ("1,568.6 million"). The text is tried whole and
    split into spans at "; ", ", " or " and " (several spans), and a bare number also as its own value (TAT-QA's
    add_percent_pred: 0.2342 matches 23.42 percent)."""
    target = tatqa_normalize(tatqa_answer_string(gold, scale))
    text = answer_text.strip().rstrip(".")
    strings = []
    for separator in (None, r";", r",\s", r"\band\b"):
        spans = [text] if separator is None else [s.strip() for s in re.split(separator, text) if s.strip()]
        if separator is not None and len(spans) < 2:
            continue
        bare, pred_scale = _split_scale(spans)
        # (text, scale) as TAT-QA's model would predict them: the scale word read off the text, kept in it too
        # (gold spans such as "$15.5 million" with scale million keep theirs), or no scale.
        strings += [tatqa_answer_string(bare, pred_scale), tatqa_answer_string(spans, pred_scale),
                    tatqa_answer_string(spans, "")]
        if len(spans) == 1 and not pred_scale and "%" not in spans[0] and _tatqa_is_number(spans[0]):
            value = _tatqa_to_number(spans[0])
            if value is not None:
                strings.append("%.4f" % value)
    return any(tatqa_normalize(s) == target for s in strings)
