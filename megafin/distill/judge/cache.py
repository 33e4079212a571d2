"""The judge's on-disk cache: one append-only JSONL file, <cache_dir>/judgments.jsonl.

Keyed by sha256 of (judge model, template text, question, reference, solution), so a rerun or a resumed job pays
for no judgment twice, and an edited template or another judge model is judged afresh.

What is cached: every judgment the judge was paid for, kept or discarded for its content (unparsable, schema,
quote_not_found, no_final_answer, refusal). Not cached: timeout and server_error, which say nothing about the
item, so that a rerun asks again.

Each line is written whole (one write on an O_APPEND descriptor, under an flock so that shards sharing the
directory do not interleave), then flushed and fsynced. A line torn by a crash (or otherwise unreadable: the file
is untrusted) is skipped and counted on loading, never fatal; a file whose last line is torn gets a newline
before the next append, so the torn piece never swallows a good line."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

from megafin.distill.judge.api import DISCARD_REASONS

FILE_NAME = "judgments.jsonl"
TRANSIENT_REASONS = ("timeout", "server_error")
_TEXT_FIELDS = ("final_answer", "first_wrong_step", "correct_prefix", "correction")


def cache_key(model: str, template_text: str, question: str, reference: str, solution: str) -> str:
    # JSON of the list: unambiguous boundaries between the parts (no concatenation collisions).
    blob = json.dumps([model, template_text, question, reference, solution])  # ASCII: lone surrogates survive
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cacheable(fields: dict[str, Any]) -> bool:
    return fields["discard_reason"] not in TRANSIENT_REASONS


def _valid_fields(fields: Any) -> bool:
    """A cached record's fields, checked as untrusted input: the Judgment fields with their types, no others."""
    if not isinstance(fields, dict) or set(fields) != {"kept", "discard_reason", "correct", "reward", *_TEXT_FIELDS}:
        return False
    kept, reason = fields["kept"], fields["discard_reason"]
    if not isinstance(kept, bool) or (kept != (reason is None)):
        return False
    if reason is not None and (reason not in DISCARD_REASONS or reason in TRANSIENT_REASONS):
        return False
    if fields["correct"] is not None and not isinstance(fields["correct"], bool):
        return False
    reward = fields["reward"]
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        return False
    return all(fields[k] is None or isinstance(fields[k], str) for k in _TEXT_FIELDS)


class JudgmentCache:
    def __init__(self, cache_dir: Union[str, Path]) -> None:
        self.path = Path(cache_dir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.bad_lines = 0  # torn or invalid lines skipped on loading
        self._lock = threading.Lock()
        self._load()
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._needs_newline = self._ends_torn()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    self.bad_lines += 1
                    continue
                if (not isinstance(record, dict) or not isinstance(record.get("key"), str)
                        or not _valid_fields(record.get("judgment"))):
                    self.bad_lines += 1
                    continue
                self.entries[record["key"]] = record["judgment"]

    def _ends_torn(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        fields = self.entries.get(key)
        return dict(fields) if fields is not None else None

    def put(self, key: str, fields: dict[str, Any]) -> None:
        """Appends one record, durable when this returns. Thread-safe; transient discards are not stored."""
        if not cacheable(fields):
            return
        line = json.dumps({"key": key, "judgment": fields}) + "\n"  # ASCII escapes: any text encodes
        with self._lock:
            if self._fd is None:
                raise RuntimeError(f"{self.path}: the judge cache is closed")
            data = (b"\n" if self._needs_newline else b"") + line.encode("utf-8")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                written = 0
                while written < len(data):  # os.write may write less than asked (signals, full pipes)
                    written += os.write(self._fd, data[written:])
                os.fsync(self._fd)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._needs_newline = False
            self.entries[key] = dict(fields)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
