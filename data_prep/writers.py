"""Writers for megatron-core indexed datasets (.bin/.idx) and the JSON side files (docs/formats.md).

Outputs are written under temporary names and renamed at the end, so a run that stops (--strict, Ctrl-C)
never leaves a half-written dataset that looks complete; sets of files are committed by `data_prep.outputs`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_prep.outputs import write_json  # noqa: F401  (the JSON side files' writer, re-exported)


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

    def close(self) -> list[tuple[str, str]]:
        """Complete both files under their temporary names; -> (temporary, final) paths, for `outputs.commit`."""
        if self.num_elements == 0:
            # numpy cannot memory-map an empty file, so IndexedDataset could not open a dataset of no tokens:
            # one zero element that no sequence points to makes it loadable (readers never see it).
            self._b.data_file.write(np.zeros(1, dtype=self.dtype).tobytes())
        self._b.finalize(self._tmp + ".idx")
        return [(self._tmp + ext, self.prefix + ext) for ext in (".bin", ".idx")]

    def finalize(self) -> None:
        """close() and rename: for a file pair that nothing else must match (the packers' temporary stores)."""
        for tmp, final in self.close():
            os.replace(tmp, final)

    def abort(self) -> None:
        try:
            self._b.data_file.close()
        finally:
            for ext in (".bin", ".idx"):
                try:
                    os.remove(self._tmp + ext)
                except FileNotFoundError:
                    pass

