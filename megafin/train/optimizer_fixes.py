"""Fixes for megatron-core's DistributedOptimizer when it falls back to torch's Adam (no Apex, no TE).

Not CPU-specific, so they are not in runtime/cpu_compat: any run without Apex/TE hits them (megatron-core 0.16.1).
1. Loading into a fresh optimizer: `sharded_state_dict(is_loading=True)` calls `state_dict()`, which asserts that
   every parameter state has one common `step` (distrib_optimizer.py:642), but the fallback's init_state_fn
   creates exp_avg/exp_avg_sq without `step`. We create the state torch's AdamW would have (step 0) first.
2. After a load, `load_state_dict` gives every parameter's state ONE shared `step` tensor (lines 824-829); torch's
   AdamW increments `state["step"]` in place once per parameter, so the shared counter races ahead and a resumed
   run drifts from an uninterrupted one. Giving each parameter its own copy restores exact resume.
3. The `fully_reshardable` load copies every key of a parameter's optimizer state from the checkpoint's
   {param, exp_avg, exp_avg_sq} (line 940), so a state that holds torch's `step` raises KeyError: 'step'.
   `step` is restored from the common state dict instead; the per-parameter copy leaves it in place.
"""
from __future__ import annotations

from typing import Any

import torch


def _own_step_tensors(inner: torch.optim.Optimizer) -> None:
    for state in inner.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def _init_adam_state_with_step(inner: torch.optim.Optimizer) -> None:
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


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

        original_sharded = opt.sharded_state_dict

        def sharded_state_dict(model_sharded_state_dict: Any, is_loading: bool = False, _orig: Any = original_sharded,
                               _opt: Any = opt, **kwargs: Any) -> Any:
            if is_loading:
                _init_adam_state_with_step(_opt.optimizer)
            return _orig(model_sharded_state_dict, is_loading, **kwargs)

        original_set = opt._set_main_param_and_optimizer_states

        def set_states(model_param: Any, tensors: dict, _orig: Any = original_set, _opt: Any = opt) -> Any:
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
            kept = {k: v for k, v in _opt.optimizer.state[main_param].items() if k not in tensors}
            return _orig(model_param, {**kept, **tensors})

        opt.load_state_dict = load_state_dict
        opt.sharded_state_dict = sharded_state_dict
        opt._set_main_param_and_optimizer_states = set_states
