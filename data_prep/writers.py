"""Writers for megatron-core indexed datasets (.bin/.idx) and the JSON side files (docs/formats.md).

Outputs are written under temporary names and renamed at the end, so a run that stops (--strict, Ctrl-C)
never leaves a half-written dataset that looks complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def import_builder() -> type:
    """megatron-core's builder; its package import warns about missing TE/Apex, which is noise for data prep."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder


def token_dtype(vocab_size: int) -> type:
    """Megatron-LM's choice: uint16 when ids fit, else int32 (the .idx records it; readers need not guess)."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


class SequenceWriter:
    """One `IndexedDatasetBuilder`; every sequence added is its own document (Megatron-LM's convention)."""

    def __init__(self, prefix: str, dtype: type):
        IndexedDatasetBuilder = import_builder()

        self.prefix = str(prefix)
        self._tmp = self.prefix + ".tmp"
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._b = IndexedDatasetBuilder(self._tmp + ".bin", dtype=dtype)
        self.num_sequences = 0
        self.num_elements = 0

    def add(self, seq: np.ndarray | list[int]) -> None:
        arr = np.asarray(seq, dtype=self.dtype)
        self._b.add_document(arr, [arr.size])
        self.num_sequences += 1
        self.num_elements += int(arr.size)

    def add_many(self, flat: np.ndarray, lengths: np.ndarray | list[int]) -> None:
        """Many sequences at once: one write instead of one per document (short-document corpora).

        Produces exactly what `add` would for each sequence (a test checks the bytes); it extends the
        builder's own index lists, which is what `IndexedDatasetBuilder.add_document` does internally.
        """
        lengths = [int(x) for x in lengths]
        if not lengths:
            return
        arr = np.ascontiguousarray(flat, dtype=self.dtype)
        assert arr.size == sum(lengths)
        self._b.data_file.write(arr.tobytes(order="C"))
        start = len(self._b.sequence_lengths)
        self._b.sequence_lengths.extend(lengths)
        self._b.document_indices.extend(range(start + 1, start + 1 + len(lengths)))
        self.num_sequences += len(lengths)
        self.num_elements += int(arr.size)

    def finalize(self) -> None:
        self._b.finalize(self._tmp + ".idx")
        os.replace(self._tmp + ".bin", self.prefix + ".bin")
        os.replace(self._tmp + ".idx", self.prefix + ".idx")

    def abort(self) -> None:
        try:
            self._b.data_file.close()
        finally:
            for ext in (".bin", ".idx"):
                try:
                    os.remove(self._tmp + ext)
                except FileNotFoundError:
                    pass


def write_json(path: str | os.PathLike, obj: Any) -> None:
    tmp = str(path) + ".tmp"
    Path(tmp).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
