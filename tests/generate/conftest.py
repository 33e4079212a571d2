"""A tiny random HF Llama (the project's tokenizer, a chat template) and its megafin conversion, once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llama_pair(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF directory, megafin checkpoint converted from it by from-hf)."""
    from megafin.convert.convert import from_hf
    from tests.convert.hf_fixtures import make_hf_llama

    root = tmp_path_factory.mktemp("generate")
    hf = make_hf_llama(root / "hf", tied=False, seed=3, tokenizer_dir=tiny_data / "tokenizer")
    return hf, from_hf(hf, root / "megafin")
