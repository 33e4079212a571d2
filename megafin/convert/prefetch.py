"""Overlap reading with writing: a conversion's source reads and layout shuffles run one step ahead of its writes.

Both directions are a pipeline of (read, reshuffle) -> write; file reads, tensor copies and file writes all release
the GIL, so on two cores a producer thread hides most of the read side behind the write side. What runs ahead is
bounded in bytes, not items: a Llama-3 embedding alone is ~0.5 GB in bf16, and peak memory must stay near one
tensor or two.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T", bound=tuple)

DEFAULT_AHEAD_BYTES = 256 << 20


def _nbytes(item: tuple) -> int:
    return sum(x.nbytes for x in item if isinstance(x, torch.Tensor))


def prefetched(items: Iterable[T], ahead_bytes: int = DEFAULT_AHEAD_BYTES) -> Iterator[T]:
    """`items` in order, produced by a background thread that stays at most `ahead_bytes` of tensors ahead of the
    consumer (always at least one item, so a single tensor larger than the budget still flows). An exception in the
    producer is raised in the consumer at the item where it happened; closing the iterator stops the producer."""
    ready: deque = deque()
    cond = threading.Condition()
    state = {"bytes": 0, "done": False, "error": None, "stop": False}

    def produce() -> None:
        try:
            for item in items:
                size = _nbytes(item)
                with cond:
                    while ready and state["bytes"] + size > ahead_bytes and not state["stop"]:
                        cond.wait()
                    if state["stop"]:
                        return
                    ready.append((item, size))
                    state["bytes"] += size
                    cond.notify_all()
        except BaseException as err:  # handed to the consumer, raised there
            with cond:
                state["error"] = err
        finally:
            with cond:
                state["done"] = True
                cond.notify_all()

    thread = threading.Thread(target=produce, name="megafin-convert-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                while not ready and not state["done"]:
                    cond.wait()
                if ready:
                    item, size = ready.popleft()
                    state["bytes"] -= size
                    cond.notify_all()
                elif state["error"] is not None:
                    raise state["error"]
                else:
                    return
            yield item
            del item
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        thread.join()
