"""DPO (Rafailov et al. 2023), with conservative label smoothing (dpo.label_smoothing):
-(1 - ls) * logsigmoid(beta * delta) - ls * logsigmoid(-beta * delta), delta = chosen - rejected log-ratio."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megafin.stages.preference.losses import PairLogps, PairLoss, PairLossOutput, reference_rewards, register_loss


def sigmoid_preference(beta: float, label_smoothing: float, delta: torch.Tensor) -> torch.Tensor:
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


@register_loss("dpo")
class DPOLoss(PairLoss):
    def __call__(self, s: PairLogps) -> PairLossOutput:
        chosen_ratio, rejected_ratio, reward_c, reward_r = reference_rewards(self.d.beta, s)
        pref = sigmoid_preference(self.d.beta, self.d.label_smoothing, chosen_ratio - rejected_ratio)
        return PairLossOutput(pref=pref, loss=pref, reward_chosen=reward_c, reward_rejected=reward_r)
