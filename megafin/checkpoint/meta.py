"""megafin.json: what a checkpoint records besides its tensors. One dataclass, one writer (`write`), one reader
(`read`), for checkpoints saved by training and written by `megafin convert from-hf` alike.

The file is untrusted input (a checkpoint may come from elsewhere): a missing or unknown key, or a value of the
wrong type, is one CheckpointError line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from megafin.checkpoint.atomic import write_text_atomic
from megafin.checkpoint.errors import CheckpointError

META = "megafin.json"
LAYOUT_KEYS = ("tp", "pp", "dp")


@dataclass
class CheckpointMeta:
    step: int
    consumed_samples: int
    consumed_tokens: int
    layout: dict[str, int]  # the tp/pp/dp it was saved at (from-hf: 1/1/1, one process)
    # The tokenizer's real vocabulary (the embedding is padded: megafin.models.layout.padded_vocab_size).
    vocab_size: Optional[int] = None
    config: Optional[dict[str, Any]] = None  # the run's config snapshot (megafin.config.load.config_to_dict)
    # from-hf only: hf_dir, architecture, hf_dtype (to-hf's default dtype), requested_layout.
    converted_from: Optional[dict[str, Any]] = None

    def to_json(self) -> str:
        """The file's text: the fields in declaration order, optional ones only when set."""
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items()
                           if v is not None or k in _REQUIRED}, indent=2)

    def write(self, ckpt_dir: str | Path) -> None:
        write_text_atomic(Path(ckpt_dir) / META, self.to_json())

    @classmethod
    def read(cls, ckpt_dir: str | Path) -> "CheckpointMeta":
        path = Path(ckpt_dir) / META
        return cls.from_dict(read_json_object(path, "not a complete megafin checkpoint"), path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> "CheckpointMeta":
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in raw if k not in fields]
        if unknown:
            raise CheckpointError(f"{path}: unknown key {unknown[0]!r} (a {META} holds {', '.join(fields)})")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise CheckpointError(f"{path}: missing key {missing[0]!r} (required: {', '.join(_REQUIRED)})")
        for key, (ok, expected) in _CHECKS.items():
            if key in raw and not ok(raw[key]):
                raise CheckpointError(f"{path}: {key}: expected {expected}, got {raw[key]!r}"[:400])
        return cls(**raw)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_REQUIRED = ("step", "consumed_samples", "consumed_tokens", "layout")
_CHECKS = {
    "step": (_count, "a non-negative integer"),
    "consumed_samples": (_count, "a non-negative integer"),
    "consumed_tokens": (_count, "a non-negative integer"),
    "layout": (lambda v: isinstance(v, dict) and sorted(v) == sorted(LAYOUT_KEYS)
               and all(_count(n) and n > 0 for n in v.values()), "an object of positive integers tp, pp, dp"),
    "vocab_size": (lambda v: v is None or (_count(v) and v > 0), "a positive integer"),
    "config": (lambda v: v is None or isinstance(v, dict), "an object (the config snapshot)"),
    "converted_from": (lambda v: v is None or isinstance(v, dict), "an object"),
}


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object; CheckpointError naming `path` otherwise (`what`: why it should exist)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
