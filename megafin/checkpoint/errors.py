"""The one error type of checkpoint loading: a single line naming the file, tensor or marker at fault.

Raised on every rank alike (the checks only read the shared checkpoint directory), so a launcher catches it on each
rank, prints it on rank 0 and exits 2 (bad input), as for a config error.
"""
from __future__ import annotations


class CheckpointError(Exception):
    """An unreadable, incomplete, untrusted-looking or mismatched checkpoint. str(err) is one line."""
