"""How a model's tensors split over tensor- and pipeline-parallel ranks: the one place the divisibility rules and the
padded vocabulary are defined (config validation, the trainer and `megafin convert` all use these)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ModelConfig sizes tensor parallelism splits, in the order they are checked (the first misfit is reported).
TP_SPLIT_KEYS = ("num_attention_heads", "num_query_groups", "ffn_hidden_size", "make_vocab_size_divisible_by")


@dataclass(frozen=True)
class LayoutMisfit:
    """`axis` ("tp" or "pp") of size `size` does not divide model.`key` = `value`."""

    axis: str
    size: int
    key: str
    value: int


def padded_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """The embedding's row count: the vocabulary padded up to a multiple of model.make_vocab_size_divisible_by (not
    times TP), so a checkpoint's shapes do not depend on the layout it was saved at."""
    return -(-vocab_size // divisible_by) * divisible_by


def layout_problems(m: Any, tp: int, pp: int) -> list[LayoutMisfit]:
    """At most one misfit per axis: the first model size TP does not divide, and num_layers if PP does not divide
    it. An axis below 1, and sizes that are not positive, are the callers' to report (they are not misfits)."""
    out = []
    if tp >= 1:
        for key in TP_SPLIT_KEYS:
            value = getattr(m, key)
            if value > 0 and value % tp:
                out.append(LayoutMisfit("tp", tp, key, value))
                break
    if pp >= 1 and m.num_layers > 0 and m.num_layers % pp:
        out.append(LayoutMisfit("pp", pp, "num_layers", m.num_layers))
    return out
