"""Prompts with reference answers, the input of `megafin distill`: one small converter per data source, chosen by
`--source` (or recognised from the first row with `--source auto`).

Every converter turns a raw JSONL row into a `PromptRow`: the question, the material it is about (`context`: tables,
paragraphs), the reference answer as the judge reads it (`reference`, text) and as the rule verifier checks it
(`answer`: {kind: number | choice | text, value, scale}). A row a converter cannot read stops the run with one line
naming file:line and the field (nothing is skipped silently)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from megafin.distill.errors import DistillError


@dataclass(frozen=True)
class PromptRow:
    id: str
    question: str
    context: str     # "" when the question stands alone
    reference: str   # the reference answer, as text for the judge
    answer: dict     # {"kind": "number" | "choice" | "text", "value": float | letter | text, "scale": str}
    source: str      # the converter's name
    line: int        # 1-based line in the input

    def problem(self) -> str:
        """The question with its material, as the judge and the step-corrective prompts show it."""
        return f"{self.context}\n\nQuestion: {self.question}" if self.context else self.question

    def to_json(self) -> dict:
        return asdict(self)


class BadRow(ValueError):
    """A row a converter cannot read: the message names the field and what was expected."""


_FULL_NUMBER = re.compile(r"^\s*\(?\s*-?\s*\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*%?\s*\)?\s*$")
_LETTER = re.compile(r"^\s*\(?([A-Ja-j])\)?\s*$")


def answer_of(value: Any, scale: str = "") -> dict:
    """The rule verifier's view of a reference: a number (from a number or a string that is only a number), an
    option letter, or text it cannot check."""
    from megafin.eval.answers import parse_number

    if isinstance(value, bool):
        return {"kind": "text", "value": str(value), "scale": scale}
    if isinstance(value, (int, float)):
        return {"kind": "number", "value": float(value), "scale": "percent" if scale == "percent" else scale}
    text = str(value)
    if _FULL_NUMBER.match(text):
        number, percent = parse_number(text)
        return {"kind": "number", "value": number, "scale": "percent" if percent else scale}
    letter = _LETTER.match(text)
    if letter:
        return {"kind": "choice", "value": letter.group(1).upper(), "scale": ""}
    return {"kind": "text", "value": text, "scale": scale}


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"field {key!r}: expected a non-empty string, got {_shown(value)}")
    return value.strip()


def _shown(value: Any) -> str:
    return "nothing (missing)" if value is None else f"{type(value).__name__} {json.dumps(value)[:60]}"


def _format_number(value: float) -> str:
    return format(value, ".10g")


class Converter:
    """Raw row -> PromptRow. `matches` says whether a row looks like this source's (for --source auto)."""
    name = ""

    def __init__(self, fields: Optional[dict] = None) -> None:
        self.fields = fields or {}

    def matches(self, row: dict) -> bool:
        raise NotImplementedError

    def convert(self, row: dict, line: int) -> PromptRow:
        raise NotImplementedError


CONVERTERS: dict[str, type[Converter]] = {}


def register_converter(name: str) -> Callable[[type[Converter]], type[Converter]]:
    def add(cls: type[Converter]) -> type[Converter]:
        cls.name = name
        CONVERTERS[name] = cls
        return cls

    return add


def render_table(rows: list) -> str:
    """A table (list of rows of cells) as pipe-separated lines."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise BadRow(f"field 'table': expected a list of rows (lists of cells), got {_shown(rows)}")
    return "\n".join("| " + " | ".join(str(c).strip() for c in r) + " |" for r in rows)


@register_converter("tatqa")
class TatqaConverter(Converter):
    """TAT-QA rows (../shared/data/tatqa/dev.jsonl): question over a table and paragraphs; the answer is a list of
    spans or a number, with a scale (thousand, million, percent, ...)."""

    def matches(self, row: dict) -> bool:
        return {"table", "paragraphs", "question", "answer", "scale"} <= row.keys()

    def convert(self, row: dict, line: int) -> PromptRow:
        paragraphs = row.get("paragraphs")
        if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
            raise BadRow(f"field 'paragraphs': expected a list of strings, got {_shown(paragraphs)}")
        scale = row.get("scale") or ""
        if not isinstance(scale, str):
            raise BadRow(f"field 'scale': expected a string, got {_shown(scale)}")
        answer = row.get("answer")
        if isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer):
            reference = "; ".join(a.strip() for a in answer)
            checked = answer_of(answer[0], scale) if len(answer) == 1 else answer_of(reference, scale)
        elif isinstance(answer, (int, float)) and not isinstance(answer, bool):
            reference = _format_number(float(answer))
            checked = answer_of(float(answer), scale)
        elif isinstance(answer, str) and answer.strip():  # some count answers are strings ("4")
            reference = answer.strip()
            checked = answer_of(reference, scale)
        else:
            raise BadRow(f"field 'answer': expected a list of strings, a string or a number, got {_shown(answer)}")
        if scale == "percent":
            reference += "%"
        elif scale:
            reference += f" ({scale})"
        context = "\n\n".join([render_table(row.get("table")), *(p.strip() for p in paragraphs if p.strip())])
        return PromptRow(id=str(row.get("id") or f"tatqa-line-{line}"), question=_text(row, "question"),
                         context=context, reference=reference, answer=checked, source=self.name, line=line)


@register_converter("financemath")
class FinanceMathConverter(Converter):
    """FinanceMath rows (../shared/data/financemath/validation.jsonl): a word problem with markdown tables and a
    float answer."""

    def matches(self, row: dict) -> bool:
        return {"question", "tables", "answer"} <= row.keys() and isinstance(row.get("tables"), list)

    def convert(self, row: dict, line: int) -> PromptRow:
        tables = row.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise BadRow(f"field 'tables': expected a list of markdown strings, got {_shown(tables)}")
        answer = row.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, (int, float)):
            raise BadRow(f"field 'answer': expected a number, got {_shown(answer)}")
        return PromptRow(id=str(row.get("id") or f"financemath-line-{line}"), question=_text(row, "question"),
                         context="\n\n".join(t.strip() for t in tables if t.strip()),
                         reference=_format_number(float(answer)), answer=answer_of(float(answer)),
                         source=self.name, line=line)


@register_converter("jsonl")
class FieldsConverter(Converter):
    """Any JSONL with a question and a reference answer, field names from --question-field, --reference-field,
    --context-field (optional) and --id-field (else the line number)."""

    def matches(self, row: dict) -> bool:
        return True

    def convert(self, row: dict, line: int) -> PromptRow:
        question = _text(row, self.fields.get("question", "question"))
        ref_key = self.fields.get("reference", "answer")
        reference = row.get(ref_key)
        if isinstance(reference, bool) or not isinstance(reference, (str, int, float)) or \
                (isinstance(reference, str) and not reference.strip()):
            raise BadRow(f"field {ref_key!r}: expected a non-empty string or a number, got {_shown(reference)}")
        context_key = self.fields.get("context")
        context = _text(row, context_key) if context_key else ""
        id_key = self.fields.get("id", "id")
        pid = row.get(id_key)
        text = _format_number(float(reference)) if isinstance(reference, (int, float)) else reference.strip()
        return PromptRow(id=str(pid) if pid not in (None, "") else f"line-{line}", question=question, context=context,
                         reference=text, answer=answer_of(reference), source=self.name, line=line)


def source_names() -> tuple[str, ...]:
    return ("auto", *CONVERTERS)


def read_prompts(path: Path, source: str = "auto", fields: Optional[dict] = None) -> list[PromptRow]:
    """Every row of `path` converted; the first bad row (or a repeated id) raises DistillError naming file:line."""
    if source != "auto" and source not in CONVERTERS:
        raise DistillError(f"--source: expected one of {', '.join(source_names())}, got {source!r}")
    try:
        handle = path.open(encoding="utf-8")
    except OSError as err:
        raise DistillError(f"--prompts {path}: cannot read ({err.strerror})") from None
    converter: Optional[Converter] = None if source == "auto" else CONVERTERS[source](fields)
    rows: list[PromptRow] = []
    seen: dict[str, int] = {}
    with handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                raise DistillError(f"{path}:{line}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(raw, dict):
                raise DistillError(f"{path}:{line}: expected a JSON object, got {type(raw).__name__}")
            if converter is None:  # --source auto: the first converter that recognises the first row
                converter = next(cls(fields) for cls in CONVERTERS.values() if cls(fields).matches(raw))
            try:
                row = converter.convert(raw, line)
            except BadRow as err:
                raise DistillError(f"{path}:{line}: {err} (--source {converter.name})") from None
            if row.id in seen:
                raise DistillError(f"{path}:{line}: id {row.id!r} already used on line {seen[row.id]} (expected "
                                   f"unique ids: they name the samples and pairs)")
            seen[row.id] = line
            rows.append(row)
    if not rows:
        raise DistillError(f"--prompts {path}: no rows (expected JSONL with a question and a reference answer)")
    return rows
