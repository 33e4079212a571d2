"""Bin packing of documents into fixed-capacity sequences (deterministic; ties broken by input order).

A "unit" is what must stay together: one document, or a preference pair (chosen + rejected).
"""
from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from typing import Sequence

import numpy as np


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Longest unit first, each into the open bin with the least room that still fits it (else a new bin).

    O(n log capacity): open bins are bucketed by free space, and the distinct free values kept sorted.
    Returns bins as lists of unit indices, in creation order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > capacity:
        raise ValueError(f"a unit of {int(lengths.max())} tokens does not fit capacity {capacity}")
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    free_values: list[int] = []  # sorted distinct free capacities of open bins
    buckets: dict[int, deque] = {}
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect_left(free_values, n)
        if k < len(free_values):
            f = free_values[k]
            q = buckets[f]
            b = q.popleft()
            if not q:
                del buckets[f]
                free_values.pop(k)
        else:
            b, f = len(bins), capacity
            bins.append([])
        bins[b].append(i)
        rest = f - n
        if rest > 0:
            q = buckets.get(rest)
            if q is None:
                buckets[rest] = q = deque()
                insort(free_values, rest)
            q.append(b)
    return bins


def first_fit(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Units in input order, each into the first open bin that fits (the baseline the bench compares to)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    free = np.empty(max(1, lengths.size), dtype=np.int64)
    nb = 0
    bins: list[list[int]] = []
    for i, n in enumerate(lengths.tolist()):
        if n > capacity:
            raise ValueError(f"a unit of {n} tokens does not fit capacity {capacity}")
        fits = np.flatnonzero(free[:nb] >= n)
        if fits.size:
            b = int(fits[0])
        else:
            b = nb
            free[b] = capacity
            nb += 1
            bins.append([])
        bins[b].append(i)
        free[b] -= n
    return bins


def fill_ratio(lengths: Sequence[int] | np.ndarray, bins: list[list[int]], capacity: int) -> float:
    """Share of non-pad tokens when every bin is padded to `capacity`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return float(lengths.sum()) / (len(bins) * capacity) if bins else 1.0
