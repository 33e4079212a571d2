"""Training stages by name: the registry the trainer, the config checks and the data builder ask.

A stage (a training phase: cpt, sft, dpo, ...; not a pipeline stage) is one module that registers a TrainingStage
subclass under the name a recipe's `stage:` key uses. The trainer knows no stage by name. How to add one:
docs/architecture.md."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from megafin.stages.base import TrainingStage

# The modules that register the built-in stages; imported on the first lookup, so that importing a stage's config
# section (megafin.config.schema does) stays light and free of import cycles.
BUILTIN = ("megafin.stages.language_model", "megafin.stages.preference.stage")
_REGISTRY: dict[str, type["TrainingStage"]] = {}


def register_stage(name: str) -> Callable[[type["TrainingStage"]], type["TrainingStage"]]:
    def add(cls: type["TrainingStage"]) -> type["TrainingStage"]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"stage {name!r} is registered twice ({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def stage_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def stage_class(name: str) -> type["TrainingStage"]:
    """The class registered as `name` (config validation has already rejected unknown names)."""
    _load_builtin()
    return _REGISTRY[name]
