"""optimizer.torch_adamw: which kernel torch.optim.AdamW runs where megatron-core builds torch's AdamW (no Transformer
Engine or Apex, e.g. on CPU; with them megatron-core's FusedAdam runs and this changes nothing).

megatron-core's OptimizerConfig has no switch for it: it builds `torch.optim.AdamW(params, lr, ...)`, which on CPU
runs the per-tensor loop (~10 elementwise passes over every parameter; torch picks foreach only for CUDA tensors).
torch reads `fused` / `foreach` from each param group at every step, so choosing the kernel is setting those two
entries after the build (and in `defaults`, for groups added later), and again after a checkpoint load, which
restores the saved groups' entries. The fused kernel does the same update in one pass per tensor; it rounds
differently (~1e-7 relative per step), so `default` (torch's own choice, untouched) stays the default: the golden
loss curves' numerics.
"""
from __future__ import annotations

from typing import Any

# kernel name -> the param-group entries torch.optim.AdamW reads at each step
TORCH_ADAMW_KERNELS = {
    "default": {"fused": None, "foreach": None},
    "fused": {"fused": True, "foreach": False},
}


def select_torch_adamw_kernel(optimizer: Any, kernel: str) -> int:
    """Set `kernel` on every torch.optim.AdamW inside megatron-core's optimizer (a ChainedOptimizer or one
    MegatronOptimizer); returns how many it found (0 under TE/Apex FusedAdam)."""
    import torch

    entries = TORCH_ADAMW_KERNELS[kernel]
    found = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if type(inner) is not torch.optim.AdamW:
            continue
        inner.defaults.update(entries)
        for group in inner.param_groups:
            group.update(entries)
        found += 1
    return found
