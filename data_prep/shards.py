"""`data_prep pretrain --shard i/N`: which input items shard i reads, so that N machines split one corpus.

The inputs, in order, are laid end to end as one byte space of T bytes, cut at floor(k*T/N), k = 0..N. A line of
a plain JSONL file belongs to the shard whose cut range holds its first byte (so a file is split at line
boundaries, and every shard finds its first line by itself); an input that cannot be entered in the middle
(.jsonl.gz, parquet, a `datasets` dir) belongs whole to the shard holding its first byte. Shard i's documents
are therefore a contiguous run of the single run's, and shards 0..N-1 in order are exactly its documents in its
order: `data_prep merge` concatenates them into the single run's bytes. Line numbers in messages are those of
the whole file. Nothing but file sizes is needed to plan, and a shard reads only its own bytes (plus a newline
count of the bytes before its range in the file where it starts).
"""
from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_prep.sources import HubSource, Raw, source_for


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def prefix(self, output_prefix: str) -> str:
        """Where this shard's output goes: PREFIX_shard03-of-16 (zero-padded so shell globs sort)."""
        w = len(str(self.count - 1))
        return f"{output_prefix}_shard{self.index:0{w}d}-of-{self.count}"


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | Shard) -> Shard:
    """'i/N' -> Shard(i, N); a malformed value raises ValueError naming --shard and what was expected."""
    if isinstance(text, Shard):
        return text
    m = _SHARD.match(str(text))
    if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise ValueError(f"--shard {text} (expected i/N with 0 <= i < N, e.g. 0/8 ... 7/8)")
    return Shard(int(m.group(1)), int(m.group(2)))


def _input_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return os.path.getsize(path)


@dataclass(frozen=True)
class Piece:
    """What one shard reads of one input: byte range [start, end) of a plain JSONL file, or the whole input."""

    path: str
    start: int = 0
    end: int | None = None  # None: the whole input

    def to_dict(self) -> dict:
        return {"path": self.path, "start": self.start, "end": self.end}


def plan(paths: list[str], shard: Shard) -> list[Piece]:
    """The pieces of `paths` that `shard` reads, in input order (deterministic: file sizes only)."""
    for p in paths:
        if HubSource.matches(p):
            raise ValueError(f"{p}: a hub dataset cannot be split with --shard (its size is unknown); save it with "
                             "datasets' save_to_disk and pass the directory")
    sizes = [_input_bytes(p) for p in paths]
    total = sum(sizes)
    cuts = [k * total // shard.count for k in range(shard.count)]

    def owner(pos: int) -> int:  # the shard whose range holds byte `pos` (the last one for pos == total)
        return bisect.bisect_right(cuts, pos) - 1

    lo = cuts[shard.index]
    hi = cuts[shard.index + 1] if shard.index + 1 < shard.count else total
    pieces: list[Piece] = []
    offset = 0
    for path, size in zip(paths, sizes):
        if getattr(source_for(path), "splittable", lambda _: False)(path):
            start, end = max(lo - offset, 0), min(hi - offset, size)  # lines starting here are ours
            if start < end:
                pieces.append(Piece(path, start, end))
        elif owner(offset) == shard.index:
            pieces.append(Piece(path))
        offset += size
    return pieces


def iter_pieces(pieces: list[Piece], max_bytes: int) -> Iterator[Raw]:
    """Raw items of the pieces, in order."""
    for pc in pieces:
        src = source_for(pc.path)
        if pc.end is None:
            yield from src.raws(pc.path, max_bytes)
        else:
            yield from src.raws_range(pc.path, max_bytes, pc.start, pc.end)
