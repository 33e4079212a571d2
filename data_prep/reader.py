"""Reference reader of the packed format (docs/formats.md), memory-mapped: what tests check, what a trainer needs.

megafin.data has its own reader; this one exists so that data_prep's outputs can be verified without the
trainer, and as an executable statement of the format.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np


class PackedDataset:
    def __init__(self, prefix: str):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        with open(f"{prefix}_meta.json") as f:
            self.meta: dict[str, Any] = json.load(f)
        self.tokens = IndexedDataset(f"{prefix}_tokens", mmap=True)
        self.loss_mask = IndexedDataset(f"{prefix}_loss_mask", mmap=True)
        self.doc_lens = IndexedDataset(f"{prefix}_doc_lens", mmap=True)
        assert len(self.tokens) == len(self.loss_mask) == len(self.doc_lens) == self.meta["num_packs"]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        # Copies (one pack is small): a view into the mmap would dangle once this dataset is collected.
        tokens = np.array(self.tokens[i])
        lens = np.array(self.doc_lens[i], dtype=np.int64)
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        # Position ids restart at 0 for every document of the pack.
        pos = np.arange(tokens.size, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), lens)
        return {
            "tokens": tokens,
            "loss_mask": np.array(self.loss_mask[i]),
            "doc_lens": lens,
            "cu_seqlens": cu,
            "position_ids": pos,
        }

    def documents(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tokens, mask) of each document of pack i."""
        p = self[i]
        cu = p["cu_seqlens"]
        return [(p["tokens"][a:b], p["loss_mask"][a:b]) for a, b in zip(cu[:-1], cu[1:])]
