"""The read-ahead thread of the conversions: order kept, errors surface at their item, memory ahead is bounded."""
from __future__ import annotations

import threading

import pytest
import torch

from megafin.convert.prefetch import prefetched


def test_items_come_in_order_and_all_of_them():
    items = [(f"k{i}", torch.full((i + 1,), float(i))) for i in range(50)]
    got = list(prefetched(iter(items), ahead_bytes=64))
    assert [k for k, _ in got] == [k for k, _ in items]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, items))


def test_producer_error_is_raised_after_the_items_before_it():
    def items():
        yield "a", torch.zeros(1)
        yield "b", torch.zeros(1)
        raise ValueError("shard 3 is truncated")

    it = prefetched(items())
    assert next(it)[0] == "a" and next(it)[0] == "b"
    with pytest.raises(ValueError, match="shard 3 is truncated"):
        next(it)


def test_bytes_ahead_of_the_consumer_stay_within_the_budget():
    produced = []
    lock = threading.Lock()

    def items():
        for i in range(20):
            with lock:
                produced.append(i)
            yield i, torch.zeros(100, dtype=torch.uint8)  # 100 bytes each

    it = prefetched(items(), ahead_bytes=300)
    for consumed in range(20):
        i, _ = next(it)
        assert i == consumed
        threading.Event().wait(0.01)  # let the producer run as far ahead as it may
        with lock:
            ahead = len(produced) - (consumed + 1)
        # up to 3 items (300 bytes) wait in the queue, plus the one the producer holds while it waits for room
        assert ahead <= 4, (consumed, ahead)


def test_an_item_larger_than_the_budget_still_flows():
    big = [("big", torch.zeros(1000, dtype=torch.uint8)), ("small", torch.zeros(1))]
    assert [k for k, _ in prefetched(iter(big), ahead_bytes=10)] == ["big", "small"]


def test_closing_early_stops_the_producer():
    started = threading.Event()

    def items():
        for i in range(10**6):
            started.set()
            yield i, torch.zeros(10, dtype=torch.uint8)

    it = prefetched(items(), ahead_bytes=100)
    next(it)
    before = threading.active_count()
    it.close()  # joins the producer thread
    assert threading.active_count() == before - 1
