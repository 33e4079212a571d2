"""train.host_memory=reuse (megafin/runtime/host_malloc.py): after keep_freed_memory, glibc serves a 48 MiB tensor
from its heap, where by default it maps it separately (and unmaps it on free, so every step faults it in anew).
glibc's own count says which (mallinfo2: bytes in mmapped blocks). Each side runs in its own interpreter: the setting
is process-wide and is not undone."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(),
                                reason="glibc's mallopt, and mallinfo2 (glibc >= 2.33) to see it")

# 48 MiB: over glibc's largest automatic mmap threshold (32 MiB), like a fused fc1 output at 4096 tokens.
MAPPED_BYTES = """
import ctypes, sys, torch
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "reuse":
    from megafin.runtime.host_malloc import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
t = torch.empty(12 * 2**20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped_bytes(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", MAPPED_BYTES, mode], cwd=REPO, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


def test_reuse_serves_large_tensors_from_the_heap():
    assert _mapped_bytes("release") >= 48 * 2**20  # glibc's default: a mapping of its own
    assert _mapped_bytes("reuse") == 0
