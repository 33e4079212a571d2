"""Fixtures for the conversion tests: tiny random HF Llamas and Qwen2s, their megafin conversions, reference
logits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.convert.hf_fixtures import FP32_VARIANTS, VARIANTS


@pytest.fixture(scope="session")
def hf_models(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: make(root / name, seed=i, tokenizer_dir=tiny_data / "tokenizer", **kw)
            for i, (name, (make, kw)) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    return torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def hf_logits(hf_models: dict[str, Path], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    out = {}
    for name in FP32_VARIANTS:
        model = AutoModelForCausalLM.from_pretrained(hf_models[name], dtype=torch.float32).eval()
        with torch.no_grad():
            out[name] = model(tokens).logits
    return out


@pytest.fixture(scope="session")
def converted(hf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """from-hf of every variant, with the layout it is meant for recorded (TP=1, TP=2, PP=2, TP=2 x PP=2)."""
    from megafin.convert.convert import from_hf

    root = tmp_path_factory.mktemp("mcore")
    out = {}
    for name, hf in hf_models.items():
        out[name] = from_hf(hf, root / name)
    for name in ("untied", "tied"):
        out[f"{name}_tp2"] = from_hf(hf_models[name], root / f"{name}_tp2", tp=2)
        out[f"{name}_pp2"] = from_hf(hf_models[name], root / f"{name}_pp2", pp=2)
    for name in ("untied", "tied", "qwen2"):
        out[f"{name}_tp2pp2"] = from_hf(hf_models[name], root / f"{name}_tp2pp2", tp=2, pp=2)
    return out
