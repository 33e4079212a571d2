"""Append-only JSONL files, the form of every output of `megafin distill` (samples, judgments): a rerun reads what is
there and skips it, so a killed run resumes where it stopped.

Lines are written whole (one write, flushed and fsynced); a last line without its newline is what a kill mid-write
leaves: it is cut off the file (and counted), while a broken line anywhere else is an error, never overwritten."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable

from megafin.distill.errors import DistillError


def read_records(path: Path, what: str) -> tuple[list[dict], bool]:
    """(the records in `path`, whether a torn last line was cut off). A missing file has none."""
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    torn = keep < len(raw)
    if torn:
        with path.open("r+b") as f:
            f.truncate(keep)
    records = []
    for number, line in enumerate(raw[:keep].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DistillError(f"{path}:{number}: not valid JSON ({err.msg}); this is not a {what} file written by "
                               f"megafin distill: write to a new --out or remove it") from None
        if not isinstance(record, dict):
            raise DistillError(f"{path}:{number}: expected a JSON object ({what})")
        records.append(record)
    return records, torn


class Appender:
    """Appends records to a JSONL file, each call's lines in one flushed and fsynced write. Thread safe: the judge
    client reports judgments from its own thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        with self._lock:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomically(path: Path, text: str) -> None:
    """The whole file or the old one: written under a temporary name, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
