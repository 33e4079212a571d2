"""Any Hugging Face tokenizer directory, seen by megatron's datasets as a MegatronLegacyTokenizer."""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer


@lru_cache(maxsize=8)
def load_hf_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_ids_tokenizer(path: str) -> Any:
    """eos/pad ids, length and plain-text ids: data_prep's LiteTokenizer (tokenizer.json read by the `tokenizers`
    backend AutoTokenizer wraps; no transformers import, ~2-3 s of every trainer's start-up on 2 cores) where the
    directory has a tokenizer.json, else AutoTokenizer."""
    from data_prep.tokenizer import load_text_tokenizer

    return load_text_tokenizer(path) if Path(path, "tokenizer.json").is_file() else load_hf_tokenizer(path)


class HFTokenizerAdapter(MegatronLegacyTokenizer):
    """What GPTDataset needs from a tokenizer: eod, pad (when distinct) and identifiers for its cache key."""

    def __init__(self, path: str) -> None:
        # The base class warns that the legacy tokenizer system is deprecated; GPTDataset 0.16 still requires it.
        logging.getLogger("megatron.core.datasets.megatron_tokenizer").setLevel(logging.ERROR)
        super().__init__(path)
        self._path = path
        self.hf = load_ids_tokenizer(path)
        if self.hf.eos_token_id is None:
            raise ValueError(f"data.tokenizer: {path} has no eos token (needed as end-of-document)")

    def tokenize(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False), dtype=np.int64)

    def detokenize(self, ids: np.ndarray) -> str:
        return load_hf_tokenizer(self._path).decode(list(ids))

    @property
    def vocab(self) -> dict:
        return load_hf_tokenizer(self._path).get_vocab()

    @property
    def inv_vocab(self) -> dict:
        return {v: k for k, v in self.vocab.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eod(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad(self) -> int:
        pad = self.hf.pad_token_id
        if pad is None or pad == self.eod:
            raise AttributeError("no distinct pad token")  # megatron then uses its own sentinel
        return int(pad)
