"""A fix for megatron-core's DistributedOptimizer when it falls back to torch's Adam (no Apex, no TE).

Not CPU-specific, so it is not in runtime/cpu_compat: any run without Apex/TE hits it. After a checkpoint load,
`DistributedOptimizer.load_state_dict` gives every parameter's state ONE shared `step` tensor
(distrib_optimizer.py:824-829 in 0.16.1); torch's AdamW increments `state["step"]` in place once per parameter,
so the shared counter races ahead and a resumed run drifts from an uninterrupted one. Giving each parameter its
own copy restores exact resume.
"""
from __future__ import annotations

from typing import Any

import torch


def _own_step_tensors(inner: torch.optim.Optimizer) -> None:
    for state in inner.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def fix_torch_adam_step_state(optimizer: Any) -> None:
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE, DistributedOptimizer

    if HAVE_APEX_OR_TE:
        return
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        original = opt.load_state_dict

        def load_state_dict(state_dict: Any, _orig: Any = original, _opt: Any = opt) -> None:
            _orig(state_dict)
            _own_step_tensors(_opt.optimizer)

        opt.load_state_dict = load_state_dict
