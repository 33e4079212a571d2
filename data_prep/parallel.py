"""Ordered, bounded parallel map: workers transform chunks, the parent consumes results in input order.

Determinism across worker counts comes from here: whatever N, results arrive in chunk order and the parent
is the only writer. At most `2 * workers` chunks are in flight, so memory does not grow with the corpus
(multiprocessing's own `imap` would read the whole input ahead).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Iterable, Iterator


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: what taskset, cgroups cpusets and Slurm grant)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


def cap_workers(requested: int) -> int:
    """--workers, at most one per available core: more only adds start-up (each loads the tokenizer) and contention."""
    if requested < 1:
        raise ValueError(f"--workers {requested} (expected >= 1)")
    cores = available_cores()
    if requested > cores:
        print(f"data_prep: --workers {requested} capped at {cores} (cores available)", file=sys.stderr)
        return cores
    return requested


def ordered_map(
    fn: Callable[[Any], Any],
    chunks: Iterable[Any],
    workers: int,
    init: Callable[..., None] | None = None,
    init_args: tuple = (),
) -> Iterator[Any]:
    if workers <= 1:
        if init is not None:
            init(*init_args)
        for c in chunks:
            yield fn(c)
        return
    # Each worker encodes single-threaded: N processes already use the cores, and the Rust tokenizer's own
    # thread pool does not survive fork.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    before = set(mp.active_children())
    # A forked worker must never collect what it inherited: the parent's garbage can hold objects whose teardown
    # only works in the parent (a fresh clone's `make test` had both workers segfault in the garbage collector,
    # forked from the test process after the conversion tests). Frozen objects are out of every collection.
    gc.freeze()
    try:
        pool = ctx.Pool(workers, initializer=init, initargs=init_args)
    finally:
        gc.unfreeze()
    started = [p for p in mp.active_children() if p not in before]
    try:
        pending: deque = deque()
        it = iter(chunks)
        for c in it:
            pending.append(pool.apply_async(fn, (c,)))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft(), started)
        while pending:
            yield _result(pending.popleft(), started)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


class WorkerDied(RuntimeError):
    """A worker process ended while chunks were in flight (multiprocessing.Pool would wait for them forever)."""


def _result(pending: Any, workers: list) -> Any:
    """The chunk's result; WorkerDied, within a second, once any worker has ended (they end only at close)."""
    while True:
        try:
            return pending.get(timeout=1.0)
        except mp.TimeoutError:
            dead = [p for p in workers if p.exitcode is not None]
            if dead:
                code = dead[0].exitcode
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                raise WorkerDied(f"a worker process died ({how}) with chunks in flight; no output was written "
                                 f"(rerun; --workers 1 runs everything in this process)") from None


def chunked(items: Iterable[Any], max_items: int, max_bytes: int, size: Callable[[Any], int]) -> Iterator[list]:
    """Group a stream into lists of <= max_items items and about max_bytes bytes."""
    buf: list = []
    nbytes = 0
    for x in items:
        buf.append(x)
        nbytes += size(x)
        if len(buf) >= max_items or nbytes >= max_bytes:
            yield buf
            buf, nbytes = [], 0
    if buf:
        yield buf


# The chunk processor of this worker process. multiprocessing hands per-process state to its tasks only through
# the pool's initializer, so this one slot is where it lands (in the parent itself when workers <= 1).
_PROCESSOR: Any = None


def _install(processor: Any) -> None:
    global _PROCESSOR
    processor.setup()
    _PROCESSOR = processor


def _process(chunk: Any) -> Any:
    return _PROCESSOR(chunk)


def map_chunks(processor: Any, chunks: Iterable[Any], workers: int) -> Iterator[Any]:
    """`ordered_map` for a processor object: `processor.setup()` once per worker process, then `processor(chunk)`
    per chunk, results in chunk order."""
    return ordered_map(_process, chunks, workers, _install, (processor,))
