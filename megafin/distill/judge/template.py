"""Judge prompt templates: a built-in one (templates/<name>.txt, shipped in the package) or the user's own file.

A template is plain text with the slots {question}, {reference} and {solution}. Only those exact three tokens
are replaced, in one pass, so every other brace is literal: the JSON example a template shows the judge needs no
`{{ }}` doubling, and braces in the inserted texts (LaTeX, JSON in a solution) are never read as slots.

Which fields the judge must answer follows from the template: one that names `first_wrong_step` asks for the
process judgment, and its answers must then carry the process fields for a wrong solution (the outcome_process
schema); any other is judged on the outcome fields only."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
SLOTS = ("question", "reference", "solution")
REQUIRED_SLOTS = ("reference", "solution")  # a judge that never sees these two cannot grade anything
_SLOT = re.compile(r"\{(question|reference|solution)\}")
PROCESS_FIELD = "first_wrong_step"


class TemplateError(ValueError):
    """A template that cannot be used (not found, not UTF-8, a required slot missing): one line."""


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.txt"))


@dataclass(frozen=True)
class JudgeTemplate:
    name: str      # the built-in name or the file's path, for messages
    text: str      # the template as read (part of the cache key: an edited template is judged afresh)
    process: bool  # asks for the process fields (first wrong step, correct prefix, correction)

    @classmethod
    def load(cls, template: Union[str, Path]) -> "JudgeTemplate":
        """A built-in name (see builtin_names()) or a path to a template file."""
        name = str(template)
        if isinstance(template, str) and name in builtin_names():
            path = BUILTIN_DIR / f"{name}.txt"
        else:
            path = Path(template)
            if not path.is_file():
                raise TemplateError(f"judge template {name!r}: neither a built-in ({', '.join(builtin_names())}) "
                                    f"nor a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise TemplateError(f"judge template {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        missing = [s for s in REQUIRED_SLOTS if "{" + s + "}" not in text]
        if missing:
            raise TemplateError(f"judge template {path}: no slot {', '.join('{' + s + '}' for s in missing)} "
                                f"(slots: {', '.join('{' + s + '}' for s in SLOTS)})")
        return cls(name=name, text=text, process=PROCESS_FIELD in text)

    def render(self, question: str, reference: str, solution: str) -> str:
        values = {"question": question, "reference": reference, "solution": solution}
        return _SLOT.sub(lambda m: values[m.group(1)], self.text)
