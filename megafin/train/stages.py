"""A stage is a batch schema plus a loss, not a new trainer. The loop asks its stage for megatron-core's
forward_step_func and for the names of the metrics its loss reports.

Reporting convention: a loss function returns (loss_sum, count, {"report": tensor}), where report[0] is the loss
sum, report[1] the count it is averaged over (target tokens, or preference pairs) and report[2:] are sums the stage
names in `metric_names`. With `calculate_per_token_loss`, megatron-core divides gradients once by the global count,
so the loss is a mean over the whole global batch, never a mean of per-micro-batch means.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

import torch

from megafin.config.schema import Config


def packed_seq_params(batch: dict, device: torch.device) -> Any:
    """THD parameters for a packed micro-batch (None for a plain [b, s] batch)."""
    if "cu_seqlens" not in batch:
        return None
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch["cu_seqlens"].to(device)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=batch["max_seqlen"],
                             max_seqlen_kv=batch["max_seqlen"])
    if "attn_prefix" in batch:  # shared-prompt preference pairs (dpo.share_prompt): read by SDPACoreAttention
        params.megafin_attn_prefix = batch["attn_prefix"]
    return params


def per_token_loss(model: Any, batch: dict, nan_loss: bool = False) -> torch.Tensor:
    """GPTModel's per-token cross entropy (vocab-parallel under TP) for a batch; on non-last PP stages, activations."""
    device = next(model.parameters()).device
    output = model(batch["tokens"].to(device), batch["position_ids"].to(device), None,
                   labels=batch["labels"].to(device), packed_seq_params=packed_seq_params(batch, device),
                   **_loss_mask_kwarg(model, batch, device))
    if nan_loss:  # fault injection: the same path a real divergence takes
        output = output * float("nan")
    return output


def _loss_mask_kwarg(model: Any, batch: dict, device: torch.device) -> dict:
    """The loss mask for a model that computes log-probs only where it is set (megafin's LogprobGPTModel, possibly
    inside DDP / Float16Module wrappers); stock GPTModel gets nothing (it would read it as a multi-token-prediction
    mask)."""
    from megafin.models.logprob_model import LogprobGPTModel

    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    return {"loss_mask": batch["loss_mask"].to(device)} if isinstance(inner, LogprobGPTModel) else {}


class Stage:
    metric_names: tuple[str, ...] = ()

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def loss(self, batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        raise NotImplementedError

    def prepare(self, trainer: Any) -> None:
        """Work before training starts (e.g. reference log-probs). Runs after datasets exist, before resume."""

    def forward_step(self, nan_loss: bool = False) -> Callable:
        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable]:
            batch = next(data_iterator)
            return per_token_loss(model, batch, nan_loss), partial(self.loss, batch)

        return forward_step

    def summarize(self, totals: torch.Tensor) -> dict[str, Optional[float]]:
        """Global sums [loss_sum, count, *metrics] -> logged values."""
        count = totals[1].item()
        out: dict[str, Optional[float]] = {"loss": (totals[0] / totals[1]).item() if count > 0 else float("nan")}
        for i, name in enumerate(self.metric_names):
            out[name] = (totals[2 + i] / totals[1]).item() if count > 0 else None
        return out


class LanguageModelStage(Stage):
    """cpt, cpt_it, sft: next-token cross entropy over target tokens (all of CPT text; responses of IT data)."""

    def loss(self, batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        mask = batch["loss_mask"].reshape(-1).to(output_tensor.device).float()
        loss_sum = torch.sum(output_tensor.reshape(-1).float() * mask)
        count = mask.sum()
        return loss_sum, count.to(torch.int), {"report": torch.stack([loss_sum.detach(), count])}

    def summarize(self, totals: torch.Tensor) -> dict[str, Optional[float]]:
        out = super().summarize(totals)
        out["target_tokens"] = int(totals[1].item())
        return out


def build_stage(cfg: Config) -> Stage:
    if cfg.stage in ("cpt", "cpt_it", "sft"):
        return LanguageModelStage(cfg)
    if cfg.stage == "dpo":
        from megafin.train.dpo import DPOStage

        return DPOStage(cfg)
    raise ValueError(f"stage: unknown stage {cfg.stage!r}")  # validation rejects this earlier
