"""IPO (Azar et al. 2023): (delta_avg - 1 / (2 * beta))^2 with per-token averaged log-ratios, as TRL and the IPO
authors do."""
from __future__ import annotations

from megafin.stages.preference.losses import PairLogps, PairLoss, PairLossOutput, reference_rewards, register_loss


@register_loss("ipo")
class IPOLoss(PairLoss):
    def __call__(self, s: PairLogps) -> PairLossOutput:
        beta = self.d.beta
        chosen_ratio, rejected_ratio, reward_c, reward_r = reference_rewards(beta, s)
        delta = chosen_ratio / s.chosen_tokens - rejected_ratio / s.rejected_tokens
        pref = (delta - 1.0 / (2.0 * beta)) ** 2
        return PairLossOutput(pref=pref, loss=pref, reward_chosen=reward_c, reward_rejected=reward_r)
