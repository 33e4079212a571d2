"""`--dedup` across the shards of `data_prep pretrain --shard i/N`: one shard cannot know what another holds, so each
shard drops the repeats it sees itself and records every good document it read, in order (digest, source line,
whether it kept it) in PREFIX_shardI-of-N_text_document_digests.npy; `data_prep merge` replays one run's dedup
over the shards in order and drops the documents an earlier shard already held. The merge is then byte-identical
to one run with --dedup, stats included (the first duplicate's line, --strict's stop at it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_prep.stats import BadInputError

SUFFIX = "_digests.npy"  # after PREFIX_shardI-of-N_text_document
# One row per good document of the shard, in input order. A fixed structured dtype: np.load(allow_pickle=False)
# reads it without executing anything from the file.
ROW = np.dtype([("digest", "V16"), ("source", "<i4"), ("line", "<i8"), ("kept", "?")])
DUPLICATE = "duplicate"
MESSAGE = "exact duplicate of an earlier document (--dedup)"


@dataclass
class DigestRecord:
    """What a --dedup shard records while it writes (pretrain's parent process, chunk by chunk)."""

    sources: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    _source_index: dict[str, int] = field(default_factory=dict)

    def add(self, where: str, digest: bytes, kept: bool) -> None:
        source, _, line = where.rpartition(":")
        k = self._source_index.setdefault(source, len(self.sources))
        if k == len(self.sources):
            self.sources.append(source)
        self.rows.append((digest, k, int(line), kept))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            np.save(f, np.array(self.rows, dtype=ROW), allow_pickle=False)


def load(path: str, docs_written: int, duplicates: int, sources: int) -> np.ndarray:
    """A shard's rows, checked against its stats (one line naming the file otherwise)."""
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: unreadable ({e}); expected the digests of a `data_prep pretrain --shard "
                            "--dedup` run, rerun this shard") from None
    if rows.dtype != ROW or rows.ndim != 1 or rows.size != docs_written + duplicates \
            or int(rows["kept"].sum()) != docs_written or (rows.size and not 0 <= rows["source"].min() <= rows[
                "source"].max() < sources):
        raise BadInputError(f"{path}: does not match its shard's stats ({docs_written:,} documents written, "
                            f"{duplicates:,} duplicates); rerun this shard")
    return rows


@dataclass
class Replay:
    """One run's dedup replayed over the shards in order."""

    strict: bool = False
    seen: set = field(default_factory=set)
    duplicates: int = 0
    first: str | None = None  # the single run's first duplicate line

    def shard(self, rows: np.ndarray, sources: list[str]) -> np.ndarray:
        """-> which of the shard's written documents one run keeps (a mask over its .idx)."""
        keep = np.ones(int(rows["kept"].sum()), dtype=bool)
        written = -1
        for digest, source, line, kept in rows.tolist():
            written += kept
            if digest not in self.seen:
                self.seen.add(digest)
                continue
            self.duplicates += 1
            if self.first is None:
                self.first = f"{sources[source]}:{line}: {MESSAGE}"
                if self.strict:
                    raise BadInputError(self.first)
            if kept:
                keep[written] = False
        return keep
