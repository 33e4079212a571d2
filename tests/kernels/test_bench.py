"""bench/kernels.py runs on CPU: says CUDA is absent, reports the packing FLOPs on the SFT mix, exits 0."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the bench")
def test_bench_cpu_path(shared_data):
    res = subprocess.run([sys.executable, str(REPO / "bench" / "kernels.py")], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "CUDA not available" in res.stdout
    assert "packed + varlen" in res.stdout and "varlen saves" in res.stdout
