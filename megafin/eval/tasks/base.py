"""What an evaluation task is to the rest of megafin: a name, the runner family that scores it, and how one row of
its data file becomes a prompt/response record (the same record trains on the task's train split and is asked of
the model on its test split, so training and evaluation prompts cannot drift apart)."""
from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    name: str    # the --task value; by convention also the task's folder in ../shared/data
    title: str   # how help text and reports name it, e.g. "FiQA-SA"
    family: str  # the runner that scores it: "classification" (megafin eval classification: exact label match)

    def record(self, row: dict, k: int) -> dict:
        """The k-th row of the task's file as {"prompt", "response"}; KeyError/TypeError/AttributeError on a row
        of the wrong schema (the caller turns that into one line naming the file and line)."""
        ...
