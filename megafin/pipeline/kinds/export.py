"""`kind: export`: `megafin convert to-hf` of a checkpoint into OUT/<stage>/hf (config.json, safetensors,
tokenizer): "@stage" is that directory.

    export: {kind: export, model: "@rpo", args: {dtype: bf16}}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from megafin.pipeline.kinds.distill import flags
from megafin.pipeline.registry import Problem, StageKind, is_mapping, is_str, optional, register_kind, require, \
    unknown_keys

HF = "hf"


@register_kind("export")
class Export(StageKind):
    resumes_in_place = False  # a half-written HF directory is replaced, never completed

    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("model", "args"))
        yield from require(s, "model", is_str, "a checkpoint (\"@stage\" or a directory)")
        yield from optional(s, "args", is_mapping, "a mapping of `megafin convert to-hf` flag -> value")

    def output(self, stage_dir: Path) -> Path:
        return stage_dir / HF

    def run(self, stage: Any) -> None:
        out = stage.directory / HF
        args = ["convert", "to-hf", "--ckpt", stage.settings["model"], "--out", str(out), "--force",
                *flags(stage.settings.get("args") or {})]
        stage.log("megafin " + " ".join(args))
        stage.megafin(args, "megafin convert to-hf")
        stage.log(f"HF model in {out}")
