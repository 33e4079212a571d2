"""What an evaluation task is to the rest of megafin.

Every task of `megafin eval run` follows `EvalTask`: it turns the rows of its data file (the layout and schemas of
../shared/data, see its SOURCES.md) into zero-shot chat examples, scores the model's outputs, and aggregates the
scores into its metric. The runner (run.py) owns generation, the bootstrap interval and the report; a task owns
only what is specific to it, so a new task is one class in a family file plus one registry entry.

Tasks whose labelled rows are also trained on (the classification family) keep `record(row, k)`: the same
prompt/response record trains on the task's train split and is asked of the model on its test split
(`TrainableTask`), so training and evaluation prompts cannot drift apart."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence


@dataclass(frozen=True)
class Example:
    id: str                      # the row's id (stable across runs: results and caches key on it)
    messages: list[dict]         # the zero-shot chat turns asked; the engine applies the chat template
    gold: Any                    # what the metric compares against: label, letter, number, text, entity spans
    meta: dict = field(default_factory=dict)  # anything the scorer needs besides gold (scale, answer type, ...)


@dataclass(frozen=True)
class Scored:
    prediction: Any              # the answer parsed out of the output (None when unparsable)
    unparsable: bool             # no answer of the expected form could be found in the output
    value: Optional[float] = None  # the example's own score where the metric is a mean (1/0, ROUGE-L); None for F1s


class EvalTask(Protocol):
    name: str                    # the --tasks value, e.g. "fpb"
    title: str                   # how reports name it, e.g. "FPB"
    metric: str                  # the headline metric, e.g. "accuracy", "weighted_f1", "entity_f1", "rouge_l"
    data_file: str               # its file under --data-dir, e.g. "fpb/test.jsonl"
    fineval_config: Optional[str]  # its config of the Salesforce/FinEval hub dataset (query/answer), None if absent
    max_new_tokens: int          # greedy decoding budget (short for direct answers, long for zero-shot CoT)
    needs_judge: bool            # scored by the generative judge (skipped with a reason when none is configured)

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        """The rows of the data file as examples; KeyError/TypeError/AttributeError on a row of the wrong schema
        (the caller turns that into one line naming the file and line)."""
        ...

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        """One Scored per example, from the model's raw output text (and the judge client where needs_judge)."""
        ...

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        """{metric: score, ...} over these examples (the headline metric first; extra ones allowed). Called again on
        bootstrap resamples, so it must depend only on its arguments."""
        ...

    def baseline(self, examples: Sequence[Example]) -> float:
        """The headline metric of the trivial answer: the majority class, or random choice."""
        ...


class TrainableTask(Protocol):
    """A task whose rows also make training records (sft_records.py, `megafin eval classification`)."""
    name: str
    title: str
    family: str  # "classification": exact label match by `megafin eval classification`

    def record(self, row: dict, k: int) -> dict:
        """The k-th row of the task's file as {"prompt", "response"}; KeyError/TypeError/AttributeError on a row
        of the wrong schema (the caller turns that into one line naming the file and line)."""
        ...


Task = TrainableTask  # the name earlier code imports
