"""One stage about to run: its settings with every "@stage" replaced by a path, its directory, its stamp record."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megafin.pipeline.errors import PipelineError
from megafin.pipeline.spec import PipelineSpec, Reference, StageSpec


def stage_dir(spec: PipelineSpec, name: str) -> Path:
    return spec.out / name


def resolve_reference(spec: PipelineSpec, ref: Reference) -> Path:
    """"@stage" -> the stage kind's output; "@stage/sub" -> OUT/stage/sub."""
    from megafin.pipeline.registry import get_kind

    directory = stage_dir(spec, ref.stage)
    if ref.sub is not None:
        return directory / ref.sub
    return get_kind(spec.stages[ref.stage].kind).output(directory)


def resolve(spec: PipelineSpec, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: resolve(spec, v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(spec, v) for v in value]
    ref = Reference.parse(value)
    return str(resolve_reference(spec, ref)) if ref is not None else value


@dataclass
class StageRun:
    spec: PipelineSpec
    stage: StageSpec
    record: dict                      # the stamp record (stamps.py)
    directory: Path
    settings: dict = field(default_factory=dict)  # resolved
    resumed: bool = False

    @classmethod
    def open(cls, spec: PipelineSpec, name: str, record: dict, resumed: bool = False) -> "StageRun":
        stage = spec.stages[name]
        return cls(spec, stage, record, stage_dir(spec, name), resolve(spec, stage.settings), resumed)

    @property
    def name(self) -> str:
        return self.stage.name

    def log(self, text: str) -> None:
        print(f"megafin pipeline: [{self.name}] {text}", file=sys.stderr, flush=True)

    def fail(self, text: str) -> PipelineError:
        return PipelineError(f"stage {self.name} ({self.spec.path}:{self.stage.line}): {text}")

    def megafin(self, args: list[str], what: str, after: str = "", keep_code: bool = False) -> None:
        """`megafin ARGS` in this process, as a user runs it; a non-zero exit fails the stage with "WHAT exited N" +
        `after` (exit 2, or the command's own code with `keep_code`: a training stage's 75 asks for a requeue)."""
        from megafin.cli import main as megafin_main

        code = megafin_main(args)
        if code != 0:
            raise PipelineError(f"stage {self.name}: {what} exited {code}{after}", code=code if keep_code else 2)
