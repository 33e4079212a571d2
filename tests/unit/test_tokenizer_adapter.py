"""The trainer's tokenizer (HFTokenizerAdapter) reads tokenizer.json without transformers, and must give the ids
AutoTokenizer gives: EOD, pad (or none), vocabulary size and plain-text ids, for each way a directory names them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


def _variant(src, dst, pad):
    shutil.copytree(src, dst)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((dst / name).read_text())
        if pad is None:
            cfg.pop("pad_token", None)
        else:
            cfg["pad_token"] = pad
        (dst / name).write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("pad", ["<|pad|>", "<|end_of_text|>", None], ids=["own-pad", "pad-is-eos", "no-pad"])
def test_adapter_ids_equal_autotokenizer(pad, tiny_data, tmp_path):
    from transformers import AutoTokenizer

    from data_prep.tokenizer import LiteTokenizer
    from megafin.data.tokenizer import HFTokenizerAdapter

    path = _variant(tiny_data / "tokenizer", tmp_path / "tok", pad)
    adapter, hf = HFTokenizerAdapter(str(path)), AutoTokenizer.from_pretrained(str(path))
    assert isinstance(adapter.hf, LiteTokenizer)
    assert adapter.eod == hf.eos_token_id and adapter.vocab_size == len(hf)
    if hf.pad_token_id is None or hf.pad_token_id == hf.eos_token_id:
        with pytest.raises(AttributeError):
            adapter.pad
    else:
        assert adapter.pad == hf.pad_token_id
    text = "Revenue rose 12.5% to $1,234 in Q3'24 <|eot_id|> and EBITDA 31%."
    ids = adapter.tokenize(text)
    assert ids.tolist() == hf.encode(text, add_special_tokens=False) and ids.dtype == np.int64
    assert adapter.detokenize(ids) == hf.decode(ids.tolist())
    assert adapter.vocab == hf.get_vocab()


def test_adapter_refuses_a_tokenizer_without_eos(tiny_data, tmp_path):
    from megafin.data.tokenizer import HFTokenizerAdapter

    path = tmp_path / "tok"
    shutil.copytree(tiny_data / "tokenizer", path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((path / name).read_text())
        cfg.pop("eos_token", None)
        (path / name).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no eos token"):
        HFTokenizerAdapter(str(path))
