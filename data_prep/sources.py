"""Raw input sources: JSONL, JSONL.gz, parquet, a local `datasets` directory, or a hub dataset name.

One small class per source format (`SOURCES`, first match wins). Reading is split in two so that the expensive
half runs in worker processes: `iter_raw` (parent, cheap: raw bytes of a line, or a row dict) and `parse_raw`
(worker: UTF-8 + JSON). Every item carries its `source:line` so any problem is reported where it is. Memory stays
bounded: a line longer than `max_bytes` is skipped without ever being held whole.
A new source format = one class here with `matches` and `raws`, placed in `SOURCES` (and named in EXPECTED_INPUT).
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_prep.stats import BadInputError

DEFAULT_MAX_DOC_BYTES = 16_000_000  # a JSON line above this is skipped as `doc_too_large` (override per run)
_SKIP_BLOCK = 1 << 20


@dataclass
class Raw:
    """One input item before parsing: the bytes of a JSONL line, or a row already decoded (parquet/datasets)."""

    source: str
    line: int
    data: bytes | dict | None
    oversize: int = 0  # >0: the line had this many bytes and was not kept


@dataclass
class Record:
    source: str
    line: int
    value: Any = None
    error: tuple[str, str] | None = None  # (reason, message) when the item cannot be used

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


EXPECTED_INPUT = "a .jsonl, .jsonl.gz, .json, .parquet file, a `datasets` save_to_disk directory, or hub:NAME"


def check_inputs(paths: Iterable[str]) -> list[str]:
    """Fail fast (in every mode) on inputs that do not exist: a typo must not yield an empty dataset."""
    out = []
    for p in paths:
        if not HubSource.matches(p) and not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such file or directory (expected {EXPECTED_INPUT})")
        out.append(p)
    return out


def _display(path: str) -> str:
    return os.path.basename(path.rstrip("/")) or path


class JsonlSource:
    """JSON lines, plain or gzip-compressed (any path no other source claims). Plain files can be read by byte
    range (`data_prep pretrain --shard`); a gzip stream cannot be entered in the middle."""

    @staticmethod
    def matches(path: str) -> bool:
        return True

    @staticmethod
    def splittable(path: str) -> bool:
        return not path.endswith(".gz")

    @staticmethod
    def raws(path: str, max_bytes: int) -> Iterator[Raw]:
        name = _display(path)
        if not path.endswith(".gz"):
            yield from _iter_lines(open(path, "rb"), name, max_bytes, [0])
            return
        line_no = [0]  # lines read so far, for the message if the stream breaks
        try:
            yield from _iter_lines(gzip.open(path, "rb"), name, max_bytes, line_no)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            # Never a skip: what is missing after the break cannot be counted.
            raise BadInputError(f"{name}: unreadable gzip after {line_no[0]:,} lines ({e}); expected a complete "
                                "gzip file (re-download or re-compress it)") from None

    @staticmethod
    def raws_range(path: str, max_bytes: int, start: int, end: int) -> Iterator[Raw]:
        """The lines of a plain JSONL file that START at a byte offset in [start, end), numbered as in the whole
        file (a line belongs to the range holding its first byte, so adjacent ranges share no line and miss none)."""
        f = open(path, "rb")
        line_no = 0
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the rest of the line holding byte start-1: it started in an earlier range
            start = f.tell()
            line_no = _count_newlines(path, start)
        yield from _iter_lines(f, _display(path), max_bytes, [0], first_line=line_no + 1, pos=start, end=end)


def _count_newlines(path: str, stop: int, block: int = 1 << 24) -> int:
    """Lines that end before byte `stop` (each ends with one newline): the line number preceding a range."""
    n = 0
    with open(path, "rb") as f:
        left = stop
        while left > 0:
            b = f.read(min(block, left))
            if not b:
                break
            n += b.count(b"\n")
            left -= len(b)
    return n


def _iter_lines(f: Any, name: str, max_bytes: int, line_count: list[int], first_line: int = 1, pos: int = 0,
                end: int | None = None) -> Iterator[Raw]:
    """Lines of `f` as Raw items; with `end`, only those starting before byte `end` (`pos`: where `f` is now)."""
    with f:
        line_no = first_line - 1
        while end is None or pos < end:
            chunk = f.readline(max_bytes + 1)
            if not chunk:
                return
            pos += len(chunk)
            line_no += 1
            line_count[0] = line_no
            if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
                # Too long: drain the rest of the line block by block, never holding it whole.
                size = len(chunk)
                while True:
                    more = f.readline(_SKIP_BLOCK)
                    size += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                pos += size - len(chunk)
                yield Raw(name, line_no, None, oversize=size)
                continue
            if not chunk.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            yield Raw(name, line_no, chunk)


class ParquetSource:
    """A parquet file, read in record batches."""

    @staticmethod
    def matches(path: str) -> bool:
        return path.endswith(".parquet")

    @staticmethod
    def raws(path: str, max_bytes: int, batch_rows: int = 4096) -> Iterator[Raw]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = _display(path)
        row = 0
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=batch_rows):
                for rec in batch.to_pylist():
                    row += 1
                    yield Raw(name, row, rec)
        except (pa.ArrowException, OSError) as e:
            raise BadInputError(f"{name}: unreadable parquet after {row:,} rows ({e}); expected a complete parquet "
                                "file") from None


def _iter_datasets(ds: Any, name: str) -> Iterator[Raw]:
    # Iterating a memory-mapped Arrow dataset row by row keeps memory flat.
    for i, rec in enumerate(ds, start=1):
        yield Raw(name, i, rec)


class DatasetsDirSource:
    """A `datasets` save_to_disk directory (its `train` split, else its first)."""

    @staticmethod
    def matches(path: str) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def raws(path: str, max_bytes: int) -> Iterator[Raw]:
        import datasets

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        yield from _iter_datasets(ds, _display(path))


class HubSource:
    """`hub:NAME`: a Hugging Face hub dataset's train split, streamed."""

    @staticmethod
    def matches(path: str) -> bool:
        return path.startswith("hub:")

    @staticmethod
    def raws(path: str, max_bytes: int) -> Iterator[Raw]:
        import datasets

        ds = datasets.load_dataset(path[4:], split="train", streaming=True)
        yield from _iter_datasets(ds, path)


# First match wins: JsonlSource takes whatever the others do not.
SOURCES = (HubSource, DatasetsDirSource, ParquetSource, JsonlSource)


def source_for(path: str) -> type:
    return next(s for s in SOURCES if s.matches(path))


def iter_raw(paths: Iterable[str], max_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Raw]:
    """Raw items of every input in order. Inputs must exist (see `check_inputs`)."""
    for path in paths:
        yield from source_for(path).raws(path, max_bytes)


def parse_raw(raw: Raw, max_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Record:
    """Decode one raw item; problems become `Record.error` = (reason, message naming what was expected)."""
    if raw.oversize:
        return Record(
            raw.source, raw.line, None,
            ("doc_too_large", f"line of {raw.oversize:,} bytes exceeds --max-doc-bytes {max_bytes:,}"),
        )
    if isinstance(raw.data, dict):
        return Record(raw.source, raw.line, raw.data)
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(
            raw.source, raw.line, None,
            ("invalid_utf8", f"invalid UTF-8 at byte {e.start} (expected UTF-8 encoded JSON)"),
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return Record(
            raw.source, raw.line, None,
            ("malformed_json", f"malformed JSON at column {e.colno}: {e.msg} (expected one JSON object per line)"),
        )
    if not isinstance(value, dict):
        return Record(
            raw.source, raw.line, None,
            ("malformed_json", f"got a JSON {type(value).__name__} (expected one JSON object per line)"),
        )
    return Record(raw.source, raw.line, value)


def iter_records(paths: Iterable[str], max_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Record]:
    """Single-process convenience: parsed records of every input, in order."""
    for raw in iter_raw(paths, max_bytes):
        yield parse_raw(raw, max_bytes)


def input_fingerprint(paths: Iterable[str]) -> list[dict]:
    """What went in (name, size), recorded in stats/meta for provenance."""
    out = []
    for p in paths:
        q = Path(p)
        out.append({"path": str(p), "bytes": q.stat().st_size if q.is_file() else None})
    return out
