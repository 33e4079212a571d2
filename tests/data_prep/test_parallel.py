"""data_prep/parallel.py's worker pool: a worker that dies is an error, not a hang, and forked workers never
collect the garbage they inherited (a fresh clone's `make test` once had both workers of a packing test segfault in
the garbage collector, after which multiprocessing.Pool waited forever for their chunks)."""
from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path

import pytest

from data_prep.parallel import WorkerDied, ordered_map


def _square_or_die(x: int) -> int:
    if x == 3:
        import faulthandler

        faulthandler.disable()  # pytest's handler would print the worker's stack: this death is the test's
        os.kill(os.getpid(), signal.SIGSEGV)
    return x * x


def test_a_worker_that_dies_is_an_error_not_a_hang():
    t0 = time.perf_counter()
    got = []
    with pytest.raises(WorkerDied, match="signal SIGSEGV"):
        for y in ordered_map(_square_or_die, range(8), workers=2):
            got.append(y)
    assert got == [0, 1, 4] and time.perf_counter() - t0 < 30


class _Cycle:
    """Garbage in a reference cycle whose finalizer says which process collected it."""

    def __init__(self, log: Path) -> None:
        self.log, self.me = log, self

    def __del__(self) -> None:
        with self.log.open("a") as f:
            f.write(f"{os.getpid()}\n")


def _collect(x: int) -> int:
    gc.collect()
    return x


def test_forked_workers_never_collect_what_they_inherited(tmp_path):
    log = tmp_path / "collected_by"
    gc.disable()  # the cycle stays uncollected garbage until the workers are forked
    try:
        _Cycle(log)
        assert list(ordered_map(_collect, range(4), workers=2)) == [0, 1, 2, 3]
    finally:
        gc.enable()
    gc.collect()
    assert log.read_text().split() == [str(os.getpid())]  # the parent's collection only
