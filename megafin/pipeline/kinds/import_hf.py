"""`kind: from_hf`: `megafin convert from-hf` of an HF model directory (Meta-Llama-3-8B-Instruct) into a megafin
checkpoint in OUT/<stage>/ckpt, what "@stage" names (a training stage's init_from).

    base: {kind: from_hf, hf: /models/Meta-Llama-3-8B-Instruct, args: {dtype: bf16, tp: 2}}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from megafin.pipeline.kinds.distill import flags
from megafin.pipeline.registry import Problem, StageKind, is_mapping, is_str, optional, register_kind, require, \
    unknown_keys

CKPT = "ckpt"


@register_kind("from_hf")
class FromHF(StageKind):
    resumes_in_place = False

    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("hf", "args"))
        yield from require(s, "hf", is_str, "an HF model directory (config.json + safetensors)")
        yield from optional(s, "args", is_mapping, "a mapping of `megafin convert from-hf` flag -> value")

    def output(self, stage_dir: Path) -> Path:
        return stage_dir / CKPT

    def run(self, stage: Any) -> None:
        args = ["convert", "from-hf", "--hf", stage.settings["hf"], "--out", str(stage.directory / CKPT), "--force",
                *flags(stage.settings.get("args") or {})]
        stage.log("megafin " + " ".join(args))
        stage.megafin(args, "megafin convert from-hf")
