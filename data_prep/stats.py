"""Counting what happened to every input item: read = written + skipped (by reason), always."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class BadInputError(Exception):
    """A bad input item under --strict (or a bad input that no mode can skip). str() = `file:line: what/expected`."""


class EmptyOutputError(BadInputError):
    """Nothing would be written (empty input, every row skipped): refused unless --allow-empty."""


def input_names(paths: list[str], most: int = 3) -> str:
    import os

    names = [os.path.basename(p.rstrip("/")) or p for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@dataclass
class Stats:
    strict: bool = False
    quiet: bool = False
    max_reported: int = 20  # skipped items printed one per line; the rest only counted
    docs_read: int = 0
    docs_written: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)  # reason -> first message (for the stats file)
    started: float = field(default_factory=time.perf_counter)

    def read(self, n: int = 1) -> None:
        self.docs_read += n

    def written(self, n_docs: int, n_tokens: int) -> None:
        self.docs_written += n_docs
        self.tokens += n_tokens

    def skip(self, where: str, reason: str, message: str) -> None:
        """Count one skipped item; under --strict stop right here with the same one-line message."""
        line = f"{where}: {message}"
        if self.strict:
            raise BadInputError(line)
        self.skipped[reason] += 1
        self.first_errors.setdefault(reason, line)
        n = sum(self.skipped.values())
        if not self.quiet and n <= self.max_reported:
            print(f"data_prep: skipped {line} [{reason}]", file=sys.stderr)
        elif not self.quiet and n == self.max_reported + 1:
            print("data_prep: more skipped items are only counted (see the stats file)", file=sys.stderr)

    def check(self) -> None:
        total = self.docs_written + sum(self.skipped.values())
        if total != self.docs_read:
            raise AssertionError(f"stats do not add up: read {self.docs_read} != written+skipped {total}")

    def snapshot(self) -> tuple[int, Counter]:
        return self.docs_read, Counter(self.skipped)

    def empty_output(self, paths: list[str], unit: str, since: tuple[int, Counter] | None = None,
                     hints: dict[str, str] | None = None,
                     need: str = "pass --allow-empty to write an empty dataset") -> EmptyOutputError:
        """The one-line error for `paths` giving no `unit`: rows read, skipped by reason (the most frequent first,
        with its first message), and what to do (`hints[top reason]`, then `need`). `since`: count from that
        `snapshot()` on (one side of `mix`)."""
        read0, skipped0 = since or (0, Counter())
        read = self.docs_read - read0
        ranked = sorted((self.skipped - skipped0).items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[0][0] if ranked else None
        if read == 0:
            why = "no rows: the input is empty or only blank lines"
        else:
            parts = [f"{r} {n}" for r, n in ranked]
            first = self.first_errors.get(top)
            if first and not skipped0.get(top):  # else its first message came from other inputs
                parts[0] += f", first {first}"
            why = f"{read} rows read, skipped: " + "; ".join(parts)
        hint = (hints or {}).get(top)
        todo = f"{hint}, or {need}" if hint else need
        return EmptyOutputError(f"{input_names(paths)}: 0 {unit} written ({why}); {todo}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def to_dict(self, **extra: Any) -> dict:
        self.check()
        secs = self.elapsed()
        d = {
            "docs_read": self.docs_read,
            "docs_written": self.docs_written,
            "tokens": self.tokens,
            "skipped": dict(sorted(self.skipped.items())),
            "first_error_by_reason": dict(sorted(self.first_errors.items())),
            "seconds": round(secs, 3),
            "docs_per_s": round(self.docs_read / secs, 1) if secs > 0 else None,
            "tokens_per_s": round(self.tokens / secs, 1) if secs > 0 else None,
        }
        d.update(extra)
        return d
