"""Helpers shared by tests/kernels (a unique module name: tests/ has no __init__.py)."""
from __future__ import annotations

import torch

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|, in float64 (NaN if x has NaN, so a never-written element fails)."""
    x, ref = x.double(), ref.double()
    if torch.isnan(x).any():
        return float("nan")
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def assert_close(name: str, x: torch.Tensor, ref: torch.Tensor, tol: float, seed: int) -> float:
    assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    err = rel_err(x, ref)
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g} (seed={seed})"  # NaN fails too
    return err


def make_cu_seqlens(lengths) -> torch.Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    return torch.tensor(cu, dtype=torch.int32)


def doc_lengths(block: int = 16) -> list[int]:
    """Random document lengths covering: length 1, exactly one block, longer than a block, a partial block."""
    lens = [1, block, int(torch.randint(block + 1, 2 * block + 9, ()).item()), int(torch.randint(2, block, ()).item())]
    return [lens[i] for i in torch.randperm(len(lens)).tolist()]
