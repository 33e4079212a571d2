"""One forward pass of a loaded megafin model to full-vocabulary logits, at any TP/PP (one rank per process, e.g.
under torchrun) as well as in a world of one: the step every decoder here is built on, and what the convert parity
tests compare with HF."""
from __future__ import annotations

import torch
import torch.distributed as dist


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full-vocabulary logits [b, s, vocab_size] on every rank, for a batch of equal-length sequences.

    PP: stage k runs on the hidden states received from stage k-1 (send/recv); TP: the vocab-parallel logits of
    the last stage are gathered; the result is then broadcast from the last stage to every stage.
    """
    from megatron.core import parallel_state as ps

    device = next(model.parameters()).device  # the GPU under NCCL: every tensor sent or reduced lives there
    b, s = tokens.shape
    tokens = tokens.to(device)
    position_ids = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
    cfg = model.config
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    if not first:
        hidden = torch.empty(s, b, cfg.hidden_size, dtype=cfg.pipeline_dtype, device=device)
        dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden)
    out = model(tokens, position_ids, None)
    if not last:
        dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
    padded = (out.shape[-1] * ps.get_tensor_model_parallel_world_size()) if last else 0
    if last and ps.get_tensor_model_parallel_world_size() > 1:
        parts = [torch.empty_like(out) for _ in range(ps.get_tensor_model_parallel_world_size())]
        dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
        out = torch.cat(parts, dim=-1)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        last_rank = ps.get_pipeline_model_parallel_last_rank()
        size = torch.tensor([padded], dtype=torch.int64, device=device)
        dist.broadcast(size, src=last_rank, group=ps.get_pipeline_model_parallel_group())
        if not last:
            out = torch.empty(b, s, int(size.item()), dtype=torch.float32, device=device)
        else:
            out = out.float().contiguous()
        dist.broadcast(out, src=last_rank, group=ps.get_pipeline_model_parallel_group())
    return out[..., :vocab_size].float()
