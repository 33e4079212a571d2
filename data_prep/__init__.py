"""data_prep: offline tokenization, chat rendering, loss masks and packing for megafin (docs/formats.md).

Python API (each also a `python -m data_prep` subcommand):
    train_tokenizer_from_file(input, vocab_size, out_dir, text_key="text") -> Path
    load_tokenizer(dir)
    pretrain(inputs, tokenizer, output_prefix, text_key="text", workers=1, dedup=False, strict=False, shard=None) -> PretrainResult
    merge(shard_prefixes, output_prefix, allow_empty=False) -> stats dict   (joins `pretrain --shard i/N` outputs)
    sft(inputs, tokenizer, output_prefix, seq_length, ...) -> PackedResult
    preference(inputs, tokenizer, output_prefix, seq_length, ...) -> PackedResult
    mix(cpt_inputs, it_inputs, tokenizer, output_prefix, seq_length, cpt_ratio=0.5, ...) -> PackedResult
    check_complete(dataset_prefix) -> None | str   (readers: refuse an output whose commit was interrupted)
Imports are lazy so `python -m data_prep tokenizer train` starts fast.
"""
from __future__ import annotations

from typing import Any

_API = {
    "train_tokenizer": "data_prep.tokenizer",
    "train_tokenizer_from_file": "data_prep.tokenizer",
    "load_tokenizer": "data_prep.tokenizer",
    "pretrain": "data_prep.pretrain",
    "merge": "data_prep.merge",
    "sft": "data_prep.packed_writer",
    "preference": "data_prep.packed_writer",
    "mix": "data_prep.packed_writer",
    "BadInputError": "data_prep.stats",
    "EmptyOutputError": "data_prep.stats",
    "OutputError": "data_prep.outputs",
    "check_complete": "data_prep.outputs",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(name)


__all__ = list(_API)
