"""Writers for megatron-core indexed datasets (.bin/.idx) and the JSON side files (docs/formats.md).

Outputs are written under temporary names and renamed at the end, so a run that stops (--strict, Ctrl-C)
never leaves a half-written dataset that looks complete; sets of files are committed by `data_prep.outputs`.
"""
from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import numpy as np


def import_builder() -> type:
    """megatron-core's builder (the reference the tests hold `SequenceWriter` to); its package import warns about
    missing TE/Apex, which is noise for data prep."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    return IndexedDatasetBuilder


def token_dtype(vocab_size: int) -> type:
    """Megatron-LM's choice: uint16 when ids fit, else int32 (the .idx records it; readers need not guess)."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


# Megatron's IndexedDataset on-disk format (megatron/core/datasets/indexed_dataset.py, `_IndexWriter`), written
# here with numpy alone: importing megatron-core to write it costs seconds of start-up (torch, TE probes, wandb)
# before the first document. tests/data_prep/test_merge.py pins the bytes to megatron-core's own builder.
INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {np.dtype(t): c for t, c in (
    (np.uint8, 1), (np.int8, 2), (np.int16, 3), (np.int32, 4), (np.int64, 5), (np.float64, 6), (np.float32, 7),
    (np.uint16, 8))}


def write_index(path: str, dtype: type, lengths: np.ndarray) -> None:
    """The .idx of a dataset whose every sequence is its own document (document_indices = 0..n)."""
    dt = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.size)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1] * dt.itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dt]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", n + 1))
        f.write(lengths.astype(np.int32).tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(np.arange(n + 1, dtype=np.int64).tobytes(order="C"))


class BadIndexError(ValueError):
    """An .idx that is not a one-sequence-per-document IndexedDataset index (str() names the file)."""


def read_index(path: str) -> tuple[np.dtype, np.ndarray]:
    """(token dtype, sequence lengths) of an .idx written by `write_index` or Megatron-LM's preprocess_data.py
    (one sequence per document); anything else is refused with `BadIndexError`."""
    with open(path, "rb") as f:
        head = f.read(len(INDEX_HEADER) + 8 + 1 + 16)
        if len(head) < len(INDEX_HEADER) + 25 or head[: len(INDEX_HEADER)] != INDEX_HEADER:
            raise BadIndexError(f"{path}: not an IndexedDataset index (bad header)")
        version, code, n, n_docs = struct.unpack("<QBQQ", head[len(INDEX_HEADER):])
        codes = {c: t for t, c in DTYPE_CODES.items()}
        if version != INDEX_VERSION or code not in codes:
            raise BadIndexError(f"{path}: unsupported index version {version} / dtype code {code}")
        lengths = np.fromfile(f, dtype=np.int32, count=n)
        f.seek(8 * n, os.SEEK_CUR)
        docs = np.fromfile(f, dtype=np.int64, count=n_docs)
    if lengths.size != n or docs.size != n_docs or n_docs != n + 1 or not np.array_equal(docs, np.arange(n + 1)):
        raise BadIndexError(f"{path}: truncated index, or not one sequence per document")
    return codes[code], lengths


class SequenceWriter:
    """An IndexedDataset (.bin/.idx) in which every sequence added is its own document (Megatron-LM's convention),
    byte-identical to what megatron-core's `IndexedDatasetBuilder.add_document` + `finalize` write."""

    def __init__(self, prefix: str, dtype: type):
        self.prefix = str(prefix)
        self._tmp = self.prefix + ".tmp"
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._data = open(self._tmp + ".bin", "wb")
        self._lengths = array("q")
        self.num_sequences = 0
        self.num_elements = 0

    def add(self, seq: np.ndarray | list[int]) -> None:
        arr = np.asarray(seq, dtype=self.dtype)
        self.add_many(arr.reshape(-1), [arr.size])

    def add_many(self, flat: np.ndarray, lengths: np.ndarray | list[int]) -> None:
        """Many sequences at once: one write instead of one per document (short-document corpora)."""
        lengths = [int(x) for x in lengths]
        if not lengths:
            return
        arr = np.ascontiguousarray(flat, dtype=self.dtype)
        assert arr.size == sum(lengths)
        self._data.write(arr.tobytes(order="C"))
        self._lengths.extend(lengths)
        self.num_sequences += len(lengths)
        self.num_elements += int(arr.size)

    def add_file(self, bin_path: str, lengths: np.ndarray, block: int = 1 << 24) -> None:
        """Append the sequences of another .bin of this dtype (its first sum(lengths) elements), copied in blocks
        (`data_prep merge` joins shards this way: bytes in, the same bytes out)."""
        left = int(np.sum(lengths, dtype=np.int64)) * self.dtype.itemsize
        with open(bin_path, "rb") as f:
            while left > 0:
                b = f.read(min(block, left))
                if not b:
                    raise ValueError(f"{bin_path}: {left:,} bytes short of what its index lists")
                self._data.write(b)
                left -= len(b)
        self._lengths.frombytes(np.asarray(lengths, dtype=np.int64).tobytes())
        self.num_sequences += len(lengths)
        self.num_elements += int(np.sum(lengths, dtype=np.int64))

    def close(self) -> list[tuple[str, str]]:
        """Complete both files under their temporary names; -> (temporary, final) paths, for `outputs.commit`."""
        if self.num_elements == 0:
            # numpy cannot memory-map an empty file, so IndexedDataset could not open a dataset of no tokens:
            # one zero element that no sequence points to makes it loadable (readers never see it).
                self._data.write(np.zeros(1, dtype=self.dtype).tobytes())
        self._data.close()
        write_index(self._tmp + ".idx", self.dtype, np.frombuffer(self._lengths, dtype=np.int64))
        return [(self._tmp + ext, self.prefix + ext) for ext in (".bin", ".idx")]

    def finalize(self) -> None:
        """close() and rename: for a file pair that nothing else must match (the packers' temporary stores)."""
        for tmp, final in self.close():
            os.replace(tmp, final)

    def abort(self) -> None:
        try:
            self._data.close()
        finally:
            for ext in (".bin", ".idx"):
                try:
                    os.remove(self._tmp + ext)
                except FileNotFoundError:
                    pass

