"""Fault injection for tests and drills, in one place (as megatron-core's fault_injector.py): the training code
has no test-only flags, only these hooks, each inert unless its environment variable is set.
- MEGAFIN_FAULT_NAN_STEPS=5,6 poisons those steps' loss with NaN, on the same path a real divergence takes (the
  model's output, before the stage's loss);
- MEGAFIN_FAULT_CRASH_IN_SAVE=20 kills the process while step 20's checkpoint is being saved (shards written, the
  checkpoint not yet complete), as a node failure mid-save would."""
from __future__ import annotations

import os
from typing import Any, Callable

NAN_STEPS = "MEGAFIN_FAULT_NAN_STEPS"
CRASH_IN_SAVE = "MEGAFIN_FAULT_CRASH_IN_SAVE"


def nan_steps() -> set[int]:
    raw = os.environ.get(NAN_STEPS, "")
    return {int(s) for s in raw.split(",") if s.strip()}


def with_nan_output(forward_step: Callable) -> Callable:
    """A megatron-core forward_step_func whose output tensor is NaN (its loss function then sees NaN)."""

    def poisoned(data_iterator: Any, model: Any) -> tuple[Any, Callable]:
        output, loss_func = forward_step(data_iterator, model)
        return output * float("nan"), loss_func

    return poisoned


def crash_if_injected_in_save(step: int) -> None:
    if os.environ.get(CRASH_IN_SAVE) == str(step):
        print(f"megafin: fault injection: crashing while saving step {step}", flush=True)
        os._exit(86)
