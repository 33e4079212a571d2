"""What every training stage is: a batch schema plus a loss, not a new trainer.

The loop asks its stage for megatron-core's forward_step_func, for its preparation (given a StageContext, nothing
more), and for how each metric its loss reports is reduced and printed.

Reporting convention: a loss function returns (loss_sum, count, {"report": tensor}), where report[0] is the loss
sum, report[1] the count it is averaged over (target tokens, or preference pairs) and report[2:] are sums of the
stage's `metrics`, in order. With `calculate_per_token_loss`, megatron-core divides gradients once by the global
count, so the loss is a mean over the whole global batch, never a mean of per-micro-batch means.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import torch

if TYPE_CHECKING:
    from megafin.config.schema import Config


@dataclass(frozen=True)
class Metric:
    """A value a stage's loss reports as a sum over the global batch; logged as sum / count."""
    name: str
    show: Optional[str] = None  # format on the stdout line (None: metrics.jsonl and wandb only)
    show_val: bool = False  # also print its validation value


@dataclass
class StageContext:
    """Everything a stage's preparation may use, handed over explicitly by the trainer's setup."""
    cfg: "Config"
    model: Any  # the bare policy GPTModel (weights can be loaded into it before the run's own are)
    forward_model: Any  # the wrapped model megatron-core's schedules run (DDP, Float16Module)
    # (with parallel.virtual_pp > 1 both are lists of model chunks: only for stages with runs_model_chunks)
    build_model: Callable[[], Any]  # a fresh model of the run's architecture (e.g. a frozen reference)
    load_weights: Callable[[str, Any], None]  # checkpoint directory -> weights into a model
    train_data: Any  # the training split's dataset (packed stages: `.packs` holds every pack)
    vocab_size: int


class TrainingStage:
    """Base class of a registered stage (megafin.stages.register_stage). Subclasses set the class attributes."""
    name: ClassVar[str] = ""  # set by register_stage
    # The data_prep packed kind this stage trains on ("sft", "mix", "preference"); None: Megatron indexed corpora
    # (data.format=pretrain) or any packed kind.
    packed_kind: ClassVar[Optional[str]] = None
    metrics: ClassVar[tuple[Metric, ...]] = ()
    count_name: ClassVar[str] = "count"  # what report[1] counts, logged as an integer under this name
    # Whether the stage trains a model of several chunks per pipeline rank (parallel.virtual_pp > 1): its
    # preparation and forward step use only what the trainer's schedule runs, no model of their own.
    runs_model_chunks: ClassVar[bool] = True
    # Whether the stage trains under parallel.cp > 1: its loss is a sum over tokens that each CP rank computes for
    # its own part of the sequence (per-document sums, as preference losses need, would span CP ranks).
    supports_context_parallel: ClassVar[bool] = False

    def __init__(self, cfg: "Config") -> None:
        self.cfg = cfg

    # ------------------------------------------------------------ config and data
    @classmethod
    def validate(cls, checks: Any, cfg: "Config") -> None:
        """Stage-specific config checks, filed on `checks` (megafin.config.validate.Checks), one line each."""

    @classmethod
    def shares_prompt(cls, cfg: "Config") -> bool:
        """Whether packed micro-batches mark shared prompts (data_prep preference pairs only)."""
        return False

    # ------------------------------------------------------------ training
    def prepare(self, ctx: StageContext) -> None:
        """Work before training starts (e.g. reference log-probs). Runs after datasets exist, before resume."""

    def loss(self, batch: dict, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        raise NotImplementedError

    def forward_step(self) -> Callable:
        def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable]:
            batch = next(data_iterator)
            return per_token_loss(model, batch), partial(self.loss, batch)

        return forward_step

    # ------------------------------------------------------------ metrics
    @property
    def report_width(self) -> int:
        return 2 + len(self.metrics)

    def summarize(self, totals: torch.Tensor) -> dict[str, Optional[float]]:
        """Global sums [loss_sum, count, *metrics] -> logged values."""
        count = totals[1].item()
        out: dict[str, Optional[float]] = {"loss": (totals[0] / totals[1]).item() if count > 0 else float("nan")}
        for i, metric in enumerate(self.metrics):
            out[metric.name] = (totals[2 + i] / totals[1]).item() if count > 0 else None
        out[self.count_name] = int(totals[1].item())
        return out

    def printed(self) -> list[tuple[str, str]]:
        """(key, format) of what the stdout line shows for this stage, in order."""
        keys = [("loss", "{:.4f}"), ("val_loss", "{:.4f}")]
        for metric in self.metrics:
            if metric.show:
                keys.append((metric.name, metric.show))
                if metric.show_val:
                    keys.append((f"val_{metric.name}", metric.show))
        return keys


# ---------------------------------------------------------------- the model forward every stage shares
def packed_seq_params(batch: dict, device: torch.device) -> Any:
    """THD parameters for a packed micro-batch (None for a plain [b, s] batch)."""
    if "cu_seqlens" not in batch:
        return None
    from megafin.models.packed_seq_params import MegafinPackedSeqParams

    cu = batch["cu_seqlens"].to(device)
    # parallel.cp > 1 (megafin.data.context_parallel.split_thd): documents padded to multiples of 2*cp
    padded = batch["cu_seqlens_padded"].to(device) if "cu_seqlens_padded" in batch else None
    return MegafinPackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                  cu_seqlens_q_padded=padded, cu_seqlens_kv_padded=padded,
                                  max_seqlen_q=batch["max_seqlen"], max_seqlen_kv=batch["max_seqlen"],
                                  attn_prefix=batch.get("attn_prefix"),  # shared-prompt pairs (dpo.share_prompt)
                                  cp_layout=batch.get("cp_layout"))


def per_token_loss(model: Any, batch: dict) -> torch.Tensor:
    """GPTModel's per-token cross entropy (vocab-parallel under TP) for a batch; on non-last PP stages, activations."""
    device = next(model.parameters()).device
    return model(batch["tokens"].to(device), batch["position_ids"].to(device), None,
                 labels=batch["labels"].to(device), packed_seq_params=packed_seq_params(batch, device),
                 **_loss_mask_kwarg(model, batch, device))


def _loss_mask_kwarg(model: Any, batch: dict, device: torch.device) -> dict:
    """The loss mask for a model that computes log-probs only where it is set (megafin's LogprobGPTModel, possibly
    inside DDP / Float16Module wrappers); stock GPTModel gets nothing (it would read it as a multi-token-prediction
    mask)."""
    from megafin.models.logprob_model import LogprobGPTModel

    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    return {"loss_mask": batch["loss_mask"].to(device)} if isinstance(inner, LogprobGPTModel) else {}


def sequence_sums(values: torch.Tensor, cu_seqlens: torch.Tensor, num_docs: int) -> torch.Tensor:
    """Per-document sums of per-token values over a THD micro-batch (the padding document dropped)."""
    from kernels import segment_sum

    return segment_sum(values, cu_seqlens.to(values.device))[:num_docs]
