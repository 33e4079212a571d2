"""RPO (Pang et al. 2024): DPO + rpo_alpha * NLL(chosen) / |chosen| (the NLL length-normalized per sequence)."""
from __future__ import annotations

from megafin.stages.preference.losses import PairLogps, PairLoss, PairLossOutput, reference_rewards, register_loss
from megafin.stages.preference.losses.dpo import sigmoid_preference


@register_loss("rpo")
class RPOLoss(PairLoss):
    def __call__(self, s: PairLogps) -> PairLossOutput:
        chosen_ratio, rejected_ratio, reward_c, reward_r = reference_rewards(self.d.beta, s)
        pref = sigmoid_preference(self.d.beta, self.d.label_smoothing, chosen_ratio - rejected_ratio)
        nll = -s.policy_chosen / s.chosen_tokens
        return PairLossOutput(pref=pref, loss=pref + self.d.rpo_alpha * nll, reward_chosen=reward_c,
                              reward_rejected=reward_r)
