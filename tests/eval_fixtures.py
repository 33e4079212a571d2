"""The tiny model the evaluation tests run (megafin eval run, lm-eval agreement, training-time eval): a random HF
Llama (tests/convert/hf_fixtures.py) with the project's tokenizer and a chat template, its context widened so the
longest real prompts (FinanceBench pages, TAT-QA tables) fit, its end tokens in its generation config, and its megafin conversion."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CONTEXT = 32768  # tokens: the tiny tokenizer (vocab 1000) makes long prompts; RoPE has no length-bound weights


@pytest.fixture(scope="session")
def eval_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF directory, megafin checkpoint converted from it)."""
    from megafin.convert.convert import from_hf
    from tests.convert.hf_fixtures import make_hf_llama

    root = tmp_path_factory.mktemp("eval_model")
    hf = make_hf_llama(root / "hf", tied=False, seed=5, rope_scaling=False, tokenizer_dir=tiny_data / "tokenizer")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    # Every end token (end of text, end of turn) in the generation config, as a chat model's release lists them:
    # HF generate (lm-eval's hf backend) stops only at these; megafin's engines also stop at the tokenizer's.
    from transformers import AutoTokenizer

    from megafin.generate.sampling import stop_token_ids

    gen = json.loads((hf / "generation_config.json").read_text())
    ends = sorted(stop_token_ids(AutoTokenizer.from_pretrained(str(hf))))
    (hf / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": ends}))
    return hf, from_hf(hf, root / "megafin")
