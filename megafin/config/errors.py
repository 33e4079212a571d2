"""The one exception a bad config raises: each problem is a single line naming the key."""
from __future__ import annotations

from typing import Sequence


class ConfigError(ValueError):
    """A recipe or override that cannot run. `lines` holds one `key: what was expected` line per problem found;
    str(err) is those lines joined by newlines (a single line when there is one problem)."""

    def __init__(self, *lines: str) -> None:
        self.lines: list[str] = [line for line in lines]
        super().__init__("\n".join(self.lines))

    @classmethod
    def collect(cls, lines: Sequence[str]) -> "ConfigError":
        return cls(*lines)
