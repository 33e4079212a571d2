"""The stage kinds a PIPELINE.yaml names (`kind:`): a registry, so that a new kind is one file in kinds/ and one line
in BUILTIN, and tests can register stub kinds. A kind knows its settings (check, before anything runs), how to run
one stage (run), what "@stage" means for it (output), and whether an interrupted stage resumes in place."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from megafin.pipeline.errors import PipelineError

BUILTIN = ("megafin.pipeline.kinds.data", "megafin.pipeline.kinds.train", "megafin.pipeline.kinds.distill",
           "megafin.pipeline.kinds.evaluate", "megafin.pipeline.kinds.export",
           "megafin.pipeline.kinds.import_hf")
_KINDS: dict[str, type["StageKind"]] = {}
_loaded = False

Problem = tuple[tuple, str, Any]  # (key path inside the stage, what was expected, what was found or ...)


class StageKind:
    """One kind of stage. `run` gets a StageRun (stage.py): its settings with every "@stage" resolved to a path,
    its directory, and a log function; it raises PipelineError (one line) on bad input it finds late."""
    name = ""
    # Settings that a rerun may change without invalidating the stage's outputs (e.g. log verbosity).
    unstamped: tuple[str, ...] = ()
    # An interrupted stage (started, never finished) with unchanged inputs keeps its directory and runs again in it
    # (training resumes from its checkpoints, distillation from its files); False: it starts from an empty one.
    resumes_in_place = True

    def check(self, settings: dict) -> Iterator[Problem]:
        return iter(())

    def deep_check(self, settings: dict) -> Iterator[Problem]:
        """Slower checks (e.g. a training recipe through the trainer's own checks), run where a pipeline is
        started or submitted, not again in each Slurm job."""
        return iter(())

    def run(self, stage: Any) -> None:
        raise NotImplementedError

    def output(self, stage_dir: Path) -> Path:
        """What "@stage" names: by default the stage's directory."""
        return stage_dir

    def slurm_job(self, stage: Any) -> Optional[dict]:
        """How --slurm runs this stage: None runs `megafin pipeline --stage NAME` in the job (one task); a dict
        {"sbatch": script, "recipe": path, "overrides": [...]} runs a training launcher script (slurm/*.sbatch)
        inside the job instead, with its ranks, signals and requeue."""
        return None


def register_kind(name: str) -> Callable[[type[StageKind]], type[StageKind]]:
    def add(cls: type[StageKind]) -> type[StageKind]:
        cls.name = name
        _KINDS[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def kind_names() -> list[str]:
    _load_builtin()
    return list(_KINDS)


def get_kind(name: str) -> StageKind:
    _load_builtin()
    if name not in _KINDS:
        raise PipelineError(f"unknown stage kind {name!r} (known: {', '.join(_KINDS)})")
    return _KINDS[name]()


# ---------------------------------------------------------------- helpers for the kinds' checks
def require(settings: dict, key: str, ok: Callable[[Any], bool], expected: str) -> Iterator[Problem]:
    if key not in settings:
        yield (key,), expected, ...
    elif not ok(settings[key]):
        yield (key,), expected, settings[key]


def optional(settings: dict, key: str, ok: Callable[[Any], bool], expected: str) -> Iterator[Problem]:
    if key in settings and not ok(settings[key]):
        yield (key,), expected, settings[key]


def unknown_keys(settings: dict, allowed: tuple[str, ...], where: tuple = ()) -> Iterator[Problem]:
    for key in settings:
        if key not in allowed:
            yield (*where, key), f"one of {', '.join(allowed)}", key


def is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_mapping(v: Any) -> bool:
    return isinstance(v, dict)
