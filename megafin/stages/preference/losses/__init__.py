"""Pair losses of the DPO family by name (`dpo.loss`). A loss is one file here that registers a PairLoss.

A pair loss maps each pair's sequence log-probs to its preference loss and implicit rewards; the stage adds the
bookkeeping (sums, counts, metrics). How to add one: docs/architecture.md."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch


@dataclass
class PairLogps:
    """Per-pair tensors: summed log-probs of the chosen / rejected response under the policy and the reference
    (None for a reference-free loss), the responses' target-token counts (at least 1), and the judge's rewards of
    the two responses where the packed data carries them (None: the data has none; pairs then count as 1 / 0)."""
    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: Optional[torch.Tensor]
    ref_rejected: Optional[torch.Tensor]
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_reward: Optional[torch.Tensor] = None
    rejected_reward: Optional[torch.Tensor] = None


@dataclass
class PairLossOutput:
    pref: torch.Tensor  # the preference term per pair (logged as pref_loss)
    loss: torch.Tensor  # what is optimized per pair (pref plus any extra term)
    reward_chosen: torch.Tensor  # implicit rewards, detached
    reward_rejected: torch.Tensor


class PairLoss:
    name: ClassVar[str] = ""
    uses_reference: ClassVar[bool] = True  # False: no reference model, no reference pass

    def __init__(self, dpo_cfg: Any) -> None:
        self.d = dpo_cfg

    @classmethod
    def validate(cls, checks: Any, dpo_cfg: Any) -> None:
        """Checks of this loss's own settings, filed on `checks`, one line each."""

    def __call__(self, s: PairLogps) -> PairLossOutput:
        raise NotImplementedError


def reference_rewards(beta: float, s: PairLogps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log-ratios against the reference, and the implicit rewards beta * log-ratio (detached)."""
    chosen_ratio = s.policy_chosen - s.ref_chosen
    rejected_ratio = s.policy_rejected - s.ref_rejected
    return chosen_ratio, rejected_ratio, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


_REGISTRY: dict[str, type[PairLoss]] = {}


def register_loss(name: str) -> Callable[[type[PairLoss]], type[PairLoss]]:
    def add(cls: type[PairLoss]) -> type[PairLoss]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin() -> None:
    """Every module in this package registers one loss: a new loss is a new file here, nothing else."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def loss_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_REGISTRY)


def loss_class(name: str) -> type[PairLoss]:
    _load_builtin()
    return _REGISTRY[name]
