"""Stage losses. Each returns (sum over target tokens, number of target tokens, reporting dict), as megatron-core's
schedules expect with `calculate_per_token_loss`: gradients are divided once by the global token count."""
from __future__ import annotations

from typing import Any

import torch


def lm_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Next-token cross entropy summed over unmasked target tokens. `output_tensor` is GPTModel's per-token loss."""
    mask = loss_mask.reshape(-1).float()
    per_token = output_tensor.reshape(-1).float()
    loss_sum = torch.sum(per_token * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, num_tokens, {"lm loss": report}


def packed_seq_params(batch: dict, device: torch.device) -> Any:
    """THD parameters for a packed micro-batch (None for a plain [b, s] batch)."""
    if "cu_seqlens" not in batch:
        return None
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch["cu_seqlens"].to(device)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=batch["max_seqlen"],
                           max_seqlen_kv=batch["max_seqlen"])


def forward_step_fn(nan_loss: bool = False) -> Any:
    """megatron-core forward_step_func over an iterator of dicts (tokens, labels, loss_mask, position_ids).
    `nan_loss` poisons the loss (fault injection: the same path a real divergence takes)."""
    from functools import partial

    def forward_step(data_iterator: Any, model: Any) -> tuple[torch.Tensor, Any]:
        batch = next(data_iterator)
        device = next(model.parameters()).device
        tokens = batch["tokens"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        position_ids = batch["position_ids"].to(device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(device, non_blocking=True)
        output = model(tokens, position_ids, None, labels=labels, packed_seq_params=packed_seq_params(batch, device))
        if nan_loss:
            output = output * float("nan")
        return output, partial(lm_loss, loss_mask)

    return forward_step
