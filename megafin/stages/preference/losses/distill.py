"""Reward distillation (Fisch et al. 2024, "Robust Preference Optimization through Reward Model Distillation"):
the policy's implicit reward margin regressed onto the judge's, with the squared loss of their L_distill,

    (beta * ((logp_c - ref_c) - (logp_r - ref_r)) - (chosen_reward - rejected_reward))^2,

unscaled (no 1/2) and in the judge's reward units: a margin of 1 (a correct vs a wrong answer, the 1 / 0 used for
pairs without judge rewards) asks for an implicit margin of 1, a Bradley-Terry preference of sigmoid(1) = 0.73,
not DPO's unbounded push. Plus dpo.distill_alpha * NLL(chosen) / |chosen| as in RPO (default 0: none)."""
from __future__ import annotations

import math

import torch

from megafin.stages.preference.losses import PairLogps, PairLoss, PairLossOutput, reference_rewards, register_loss


def judge_margin(s: PairLogps) -> torch.Tensor:
    """chosen_reward - rejected_reward per pair; 1 where the data carries no judge rewards (1 / 0)."""
    if s.chosen_reward is None or s.rejected_reward is None:
        return torch.ones_like(s.policy_chosen)
    return (s.chosen_reward - s.rejected_reward).to(s.policy_chosen.dtype)


@register_loss("distill")
class DistillLoss(PairLoss):
    @classmethod
    def validate(cls, checks, dpo_cfg) -> None:
        a = dpo_cfg.distill_alpha
        checks.require(isinstance(a, (int, float)) and math.isfinite(a) and a >= 0, "dpo.distill_alpha",
                       "a non-negative number", a)

    def __call__(self, s: PairLogps) -> PairLossOutput:
        beta = self.d.beta
        chosen_ratio, rejected_ratio, reward_c, reward_r = reference_rewards(beta, s)
        pref = (beta * (chosen_ratio - rejected_ratio) - judge_margin(s)) ** 2
        loss = pref
        if self.d.distill_alpha:  # alpha 0 adds nothing, not even 0 * an infinite NLL (= NaN)
            loss = pref + self.d.distill_alpha * (-s.policy_chosen / s.chosen_tokens)
        return PairLossOutput(pref=pref, loss=loss, reward_chosen=reward_c, reward_rejected=reward_r)
