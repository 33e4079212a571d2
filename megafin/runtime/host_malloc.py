"""glibc malloc for CPU training (`train.host_memory`): a step's large tensors come from the heap, as smaller ones do.

glibc serves an allocation over its mmap threshold (adjusted at run time, at most 32 MiB on 64-bit) with a fresh
mmap and unmaps it on free. Each step's largest activations then come back as new zero pages, one page fault per
4 KiB on first touch. A fused fc1 output of [tokens, 2 x ffn] fp32 crosses 32 MiB at 4096 tokens x ffn 1408.
Measured at bench/train_throughput.py's shape: megafin took 20k-70k faults and ~0.2 s of system time per step, HF
(whose separate gate and up outputs stay under the threshold) none; two elementwise ops on a 46 MB tensor took 33 ms
with the faults and 6 ms without.

`reuse` turns glibc's mmap for large blocks off (M_MMAP_MAX = 0) and keeps the top of the heap (M_TRIM_THRESHOLD
at its maximum), so a step reuses freed heap memory as it already does for blocks under 32 MiB. The price: the
process keeps its peak heap instead of returning it between steps (+230 MB resident at the bench's shape, 2.9 GB in
all). The heap's slow growth from fragmentation is glibc's under either setting: over 32 steps at the bench's shape
the resident size grew 234 MB with glibc's defaults and 237 MB with `reuse`. Only CPU runs apply it (on a GPU the
activations are not malloc's), and it is process-wide and not undone. A libc without mallopt (musl, macOS) is left
as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

HOST_MEMORY = ("reuse", "release")  # train.host_memory values; release: glibc's defaults

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes a C int

_applied = False


def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep it (see the module docstring); True where set (or already)."""
    global _applied
    if _applied:
        return True
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    if _applied:
        logger.info("train.host_memory=reuse: glibc malloc serves large blocks from the heap and keeps it")
    return _applied
