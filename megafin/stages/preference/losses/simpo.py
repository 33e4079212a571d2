"""SimPO (Meng et al. 2024): reference-free, a length-normalized margin.
-(1 - ls) * logsigmoid(beta * delta) - ls * logsigmoid(-beta * delta), delta = avg_c - avg_r - simpo_gamma / beta,
with avg the response's log-prob per target token; implicit rewards beta * avg (as TRL's CPO trainer logs them)."""
from __future__ import annotations

from megafin.stages.preference.losses import PairLogps, PairLoss, PairLossOutput, register_loss
from megafin.stages.preference.losses.dpo import sigmoid_preference


@register_loss("simpo")
class SimPOLoss(PairLoss):
    uses_reference = False

    @classmethod
    def validate(cls, checks, dpo_cfg) -> None:
        checks.require(dpo_cfg.simpo_gamma >= 0, "dpo.simpo_gamma", "a non-negative number", dpo_cfg.simpo_gamma)

    def __call__(self, s: PairLogps) -> PairLossOutput:
        beta = self.d.beta
        avg_c, avg_r = s.policy_chosen / s.chosen_tokens, s.policy_rejected / s.rejected_tokens
        pref = sigmoid_preference(beta, self.d.label_smoothing, avg_c - avg_r - self.d.simpo_gamma / beta)
        return PairLossOutput(pref=pref, loss=pref, reward_chosen=beta * avg_c.detach(),
                              reward_rejected=beta * avg_r.detach())
