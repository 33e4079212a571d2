"""Stage `dpo`: the DPO family (DPO, RPO, IPO, ... by `dpo.loss`) on packed preference pairs, as NeMo-Aligner does.

Pairs come from `data_prep preference`: in every pack, document 2k is the chosen and 2k+1 the rejected response
(prompt + response, loss mask on the response), with the judge's reward of each where the data carries them
(`batch["doc_rewards"]`, for dpo.loss=distill). A sequence's log-prob is the sum of its target tokens' log-probs,
taken from GPTModel's per-token (vocab-parallel) cross entropy. The pair loss comes from losses/ by name; the
reference's log-probs from reference.py when the loss uses one. Implicit rewards are logged per pair, and the loss is
a mean over all pairs of the global batch.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from megafin.stages import register_stage
from megafin.stages.base import Metric, StageContext, TrainingStage, per_token_loss, sequence_sums
from megafin.stages.preference.losses import PairLogps, loss_class, loss_names


@register_stage("dpo")
class PreferenceStage(TrainingStage):
    packed_kind = "preference"
    count_name = "pairs"
    runs_model_chunks = False  # the reference model and its log-prob pass are one chunk per rank
    metrics = (Metric("pref_loss"), Metric("nll"), Metric("reward_chosen"), Metric("reward_rejected"),
               Metric("reward_margin", show="{:.3f}"), Metric("reward_accuracy", show="{:.2f}", show_val=True))

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.d = cfg.dpo
        self.pair_loss = loss_class(self.d.loss)(self.d)
        self.reference: Any = None  # a provider from reference.py, set by prepare (None: reference-free loss)

    @classmethod
    def validate(cls, c: Any, cfg: Any) -> None:
        d, m, par = cfg.dpo, cfg.model, cfg.parallel
        names = loss_names()
        if c.require(d.loss in names, "dpo.loss", f"one of {', '.join(names)}", d.loss):
            loss_class(d.loss).validate(c, d)
        c.require(d.beta > 0, "dpo.beta", "a positive number", d.beta)
        c.require(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "a number in [0, 0.5)", d.label_smoothing)
        if d.share_prompt:
            c.require(m.attention_backend == "sdpa", "dpo.share_prompt",
                      "false unless model.attention_backend is sdpa (the varlen kernels have no prefix mask)", True)
            c.require(m.loss_positions == "targets" or m.logprob_backend == "triton",
                      "dpo.share_prompt", "false with model.loss_positions=all and the megatron log-prob backend "
                      "(per-token RoPE positions come with megafin's log-prob model)", True)
        if c.require(d.reference_logps in ("precompute", "online"), "dpo.reference_logps", "precompute or online",
                     d.reference_logps) and d.reference_logps == "online":
            c.require(par.pp == 1, "dpo.reference_logps", "precompute when parallel.pp > 1", "online")
        if d.reference and c.on_this_machine:
            c.require(Path(d.reference).is_dir(), "dpo.reference", "an existing checkpoint directory", d.reference)

    @classmethod
    def shares_prompt(cls, cfg: Any) -> bool:
        return cfg.dpo.share_prompt

    @property
    def uses_reference(self) -> bool:
        return self.pair_loss.uses_reference

    # ------------------------------------------------------------------ reference
    def prepare(self, ctx: StageContext) -> None:
        if self.uses_reference:
            from megafin.stages.preference.reference import build_reference

            self.reference = build_reference(self.cfg, ctx)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict, output_tensor: torch.Tensor, ref_output: Optional[torch.Tensor] = None
             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        device = output_tensor.device
        mask = batch["loss_mask"].reshape(-1).to(device).float()
        num_docs = batch["num_docs"]
        logp = sequence_sums(-output_tensor.reshape(-1).float() * mask, batch["cu_seqlens"], num_docs)
        ntok = sequence_sums(mask, batch["cu_seqlens"], num_docs)
        ref: Optional[torch.Tensor] = None
        if ref_output is not None:
            ref = sequence_sums(-ref_output.reshape(-1).float() * mask, batch["cu_seqlens"], num_docs)
        elif self.uses_reference:
            ref = self.reference.sequence_logps(batch, device)
        judged = batch.get("doc_rewards")  # the judge's reward of each document, where the data carries them
        if judged is not None:
            judged = judged.to(device=device, dtype=logp.dtype)
        pairs = PairLogps(policy_chosen=logp[0::2], policy_rejected=logp[1::2],
                          ref_chosen=None if ref is None else ref[0::2],
                          ref_rejected=None if ref is None else ref[1::2],
                          chosen_tokens=ntok[0::2].clamp(min=1), rejected_tokens=ntok[1::2].clamp(min=1),
                          chosen_reward=None if judged is None else judged[0::2],
                          rejected_reward=None if judged is None else judged[1::2])
        out = self.pair_loss(pairs)
        nll = -pairs.policy_chosen / pairs.chosen_tokens
        n_pairs = out.loss.numel()
        margin = out.reward_chosen - out.reward_rejected
        loss_sum = out.loss.sum()
        report = torch.stack([loss_sum.detach(), torch.tensor(float(n_pairs), device=device),
                              out.pref.detach().sum(), nll.detach().sum(),
                              out.reward_chosen.sum(), out.reward_rejected.sum(), margin.sum(),
                              (margin > 0).float().sum()])
        return loss_sum, torch.tensor(n_pairs, dtype=torch.int, device=device), {"report": report}

    def forward_step(self) -> Callable:
        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable]:
            batch = next(data_iterator)
            ref_out = self.reference.per_token(batch) if self.uses_reference else None
            return per_token_loss(model, batch), partial(self.loss, batch, ref_output=ref_out)

        return forward_step
