"""The instructions shared by several tasks' prompts, so that every reasoning task asks for its final answer the
same way (and the answer parsers in ../answers.py know where to look)."""
from __future__ import annotations

# Zero-shot chain of thought (the paper's setting for reasoning tasks): think, then one last line the parser reads.
COT_NUMBER = ("Think step by step, then give the final answer on the last line as \"Answer: <number>\" "
              "(a number only, no units).")
COT_TEXT = "Think step by step, then give the final answer on the last line as \"Answer: <answer>\"."


def user(content: str) -> list[dict]:
    """A zero-shot chat: the one user turn (the engine applies the model's chat template)."""
    return [{"role": "user", "content": content}]


def table(rows: list[list]) -> str:
    """A table's rows as markdown-style lines ("| a | b |"), the way FinanceMath's own tables are written."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise TypeError("table must be a list of rows (lists of cells)")
    return "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
