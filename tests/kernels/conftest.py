"""Fixtures for the kernel tests: a fresh seed per test, printed so a failure can be reproduced."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def seed():
    """Fresh random inputs every run; ``KERNELS_SEED=<n>`` replays one (the seed is printed with any failure)."""
    s = int(os.environ.get("KERNELS_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"seed={s}  (reproduce: KERNELS_SEED={s} pytest tests/kernels ...)")
    torch.manual_seed(s)
    return s

