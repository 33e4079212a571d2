"""Fixtures for data_prep tests: small tokenizers trained once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dp_helpers import SAMPLES


@pytest.fixture(scope="session")
def sample_tok(tmp_path_factory) -> str:
    """A megafin tokenizer trained on the repo's own sample texts (no ../shared needed)."""
    from data_prep.tokenizer import train_tokenizer

    texts = []
    for name in ("finance_corpus.jsonl", "general_corpus.jsonl"):
        p = SAMPLES / name
        if p.exists():
            texts += [json.loads(l)["text"] for l in p.open()]
    for l in (SAMPLES / "sft_sample.jsonl").open():
        texts.append(l)
    out = tmp_path_factory.mktemp("tok_sample")
    return str(train_tokenizer(texts, 700, out))


@pytest.fixture(scope="session")
def real_tok(shared_data, tmp_path_factory) -> str:
    """Vocab 4000 on the Reuters CPT file: a realistic merge table for the real-data tests."""
    from data_prep.tokenizer import train_tokenizer_from_file

    out = tmp_path_factory.mktemp("tok_real")
    return str(train_tokenizer_from_file(shared_data / "cpt" / "reuters21578_news.jsonl", 4000, out))
