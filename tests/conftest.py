"""Test-wide settings. Lives at the top so it runs before any kernel module is imported."""
from __future__ import annotations

import os
from pathlib import Path

# Triton reads this when @triton.jit decorates a kernel, so it must be set before kernels/ is imported.
# Only without CUDA: on a GPU machine the same tests exercise the compiled kernels.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # One config per kernel: autotuning compiles every config for every dtype/shape (~30 s a test on an H200);
    # bench/gpu_check.py's kernels part autotunes on the real shapes.
    os.environ.setdefault("MEGAFIN_KERNELS_AUTOTUNE", "0")
# Tests never talk to wandb's servers.
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real financial data in ../shared/data: skipped on a user's clone, a failure in CI."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {SHARED_DATA} is missing: the real-data tests must run in CI")
        pytest.skip(f"{SHARED_DATA} not present (a user's clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer + indexed corpora built from the project's own samples by data_prep, once per session."""
    from megafin.demo import prepare_data

    return prepare_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def megatron_world():
    """megatron-core process groups (gloo, world of one) in the test process, torn down after the module."""
    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed

    init_distributed(detect_launch_env(), tp=1, pp=1, seed=11)
    yield
    shutdown_distributed()
