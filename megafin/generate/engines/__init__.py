"""Generation engines by name (`--engine auto|megafin|hf|vllm|openai`): one interface, chosen by config.

An engine module registers a `GenerationEngine` subclass with `@register_engine(name)`; `open_engine` builds one
for a model (a megafin checkpoint, an HF directory, or a model name at an OpenAI-compatible endpoint)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from megafin.generate.api import GenerationError, GenerationRequest, GenerationResult

BUILTIN = {"megafin": "megafin_engine", "hf": "hf_engine", "vllm": "vllm_engine", "openai": "openai_engine"}
_REGISTRY: dict[str, type["GenerationEngine"]] = {}


class GenerationEngine:
    name = ""

    def __init__(self, model: str, **options: Any) -> None:
        self.model = model

    @property
    def model_name(self) -> str:
        """What /v1/models and result rows call the model."""
        return Path(self.model).name or self.model

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order. Requests are checked first (GenerationError names the bad one)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the model / process groups / connections."""

    def __enter__(self) -> "GenerationEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def register_engine(name: str) -> Callable[[type[GenerationEngine]], type[GenerationEngine]]:
    def add(cls: type[GenerationEngine]) -> type[GenerationEngine]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def engine_names() -> tuple[str, ...]:
    return ("auto", *BUILTIN)


def engine_class(name: str) -> type[GenerationEngine]:
    if name not in BUILTIN and name not in _REGISTRY:
        raise GenerationError(f"--engine: expected one of {', '.join(engine_names())}, got {name!r}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{BUILTIN[name]}")
    return _REGISTRY[name]


def auto_engine(model: str, base_url: str | None = None) -> str:
    """megafin for a megafin checkpoint; for an HF directory vLLM on a GPU where it is installed, else hf; openai
    for a model at an endpoint (--base-url)."""
    if base_url:
        return "openai"
    path = Path(model)
    if (path / "megafin.json").is_file():
        return "megafin"
    if (path / "config.json").is_file():
        import importlib.util

        import torch

        return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    raise GenerationError(f"--model {model}: expected a megafin checkpoint (with megafin.json), a Hugging Face "
                          f"model directory (with config.json), or --base-url for a model at an endpoint")


def open_engine(engine: str, model: str, **options: Any) -> GenerationEngine:
    name = auto_engine(model, options.get("base_url")) if engine == "auto" else engine
    return engine_class(name)(model, **options)
