"""cpt, cpt_it, sft: next-token cross entropy over target tokens (all of CPT text; the responses of IT data)."""
from __future__ import annotations

import torch

from megafin.stages import register_stage
from megafin.stages.base import TrainingStage


class LanguageModelStage(TrainingStage):
    count_name = "target_tokens"
    supports_context_parallel = True  # a per-token sum: each CP rank's part adds up over the dp x cp group

    def loss(self, batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        mask = batch["loss_mask"].reshape(-1).to(output_tensor.device).float()
        loss_sum = torch.sum(output_tensor.reshape(-1).float() * mask)
        count = mask.sum()
        return loss_sum, count.to(torch.int), {"report": torch.stack([loss_sum.detach(), count])}


@register_stage("cpt")
class ContinualPretraining(LanguageModelStage):
    """Raw text: Megatron indexed corpora (data_prep pretrain), or packs of any kind."""


@register_stage("cpt_it")
class JointPretrainingInstructionTuning(LanguageModelStage):
    """FinDAP's joint CPT + IT: text and instruction data mixed in packs (data_prep mix)."""
    packed_kind = "mix"


@register_stage("sft")
class SupervisedFinetuning(LanguageModelStage):
    """Chat data, loss on the responses (data_prep sft)."""
    packed_kind = "sft"
