"""Ordered, bounded parallel map: workers transform chunks, the parent consumes results in input order.

Determinism across worker counts comes from here: whatever N, results arrive in chunk order and the parent
is the only writer. At most `2 * workers` chunks are in flight, so memory does not grow with the corpus
(multiprocessing's own `imap` would read the whole input ahead).
"""
from __future__ import annotations

import multiprocessing as mp
import os
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
    pool = ctx.Pool(workers, initializer=init, initargs=init_args)
    try:
        pending: deque = deque()
        it = iter(chunks)
        for c in it:
            pending.append(pool.apply_async(fn, (c,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


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
