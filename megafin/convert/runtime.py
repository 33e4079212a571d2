"""megatron-core in a process: a session, the model of a checkpoint, forward and greedy decoding.

The conversions themselves do not build the model (they stream tensors; from-hf only builds a tiny template of it
in a session of one process to learn its checkpoint keys). These helpers are how a converted checkpoint is checked:
`load_model` goes through the trainer's own `load_checkpoint`, and `forward_logits`/`greedy_decode` work at TP>1/PP>1
(one rank per process, e.g. under torchrun) as well as in a world of one.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from megafin.config.schema import Config


@contextlib.contextmanager
def megatron_session(tp: int = 1, pp: int = 1, seed: int = 1234) -> Iterator[None]:
    """Process groups for this process: torchrun's world if launched by it, else a world of one."""
    from megafin.runtime.distributed import LaunchEnv, _free_port, detect_launch_env, init_distributed, \
        shutdown_distributed

    launch = detect_launch_env()
    if launch.launcher != "torchrun":
        launch = LaunchEnv(0, 1, 0, "127.0.0.1", _free_port(), "single")
    init_distributed(launch, tp, pp, seed)
    try:
        yield
    finally:
        shutdown_distributed()


def model_build_config(cfg: Config, tp: int, pp: int) -> Config:
    """The config to build this process's model with: the given layout, CPU-runnable precision."""
    out = copy.deepcopy(cfg)
    out.parallel.tp, out.parallel.pp = tp, pp
    out.parallel.sequence_parallel = False
    if out.precision.dtype == "fp8":  # fp8 trains on bf16 parameters; the weights are bf16
        out.precision.dtype = "bf16"
    return out


def load_model(ckpt: Path, tp: int = 1, pp: int = 1) -> tuple[torch.nn.Module, Config, int]:
    """This rank's stage of the checkpoint's model at the session's layout, weights loaded. Needs a session."""
    from megafin.checkpoint.manager import load_checkpoint
    from megafin.convert.convert import checkpoint_config
    from megafin.models.gpt import build_model

    ckpt = Path(ckpt)
    cfg, vocab = checkpoint_config(ckpt)
    model = build_model(model_build_config(cfg, tp, pp), vocab)
    load_checkpoint(ckpt, model, None, None)
    model.eval()
    return model, cfg, vocab


@torch.no_grad()
def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full-vocabulary logits [b, s, vocab_size] on every rank, for a batch of equal-length sequences.

    PP: stage k runs on the hidden states received from stage k-1 (send/recv); TP: the vocab-parallel logits of
    the last stage are gathered; the result is then broadcast from the last stage to every stage.
    """
    from megatron.core import parallel_state as ps

    b, s = tokens.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s)
    cfg = model.config
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    if not first:
        hidden = torch.empty(s, b, cfg.hidden_size, dtype=cfg.pipeline_dtype)
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
        size = torch.tensor([padded], dtype=torch.int64)
        dist.broadcast(size, src=last_rank, group=ps.get_pipeline_model_parallel_group())
        if not last:
            out = torch.empty(b, s, int(size.item()), dtype=torch.float32)
        else:
            out = out.float().contiguous()
        dist.broadcast(out, src=last_rank, group=ps.get_pipeline_model_parallel_group())
    return out[..., :vocab_size].float()


@torch.no_grad()
def greedy_decode(model: torch.nn.Module, prompt: list[int], vocab_size: int, max_new_tokens: int,
                  eos_token_id: Optional[int] = None) -> list[int]:
    """megafin's own greedy decoding: the full forward re-run on the growing sequence (no KV cache)."""
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = forward_logits(model, torch.tensor([ids]), vocab_size)
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        new.append(nxt)
        if eos_token_id is not None and nxt == eos_token_id:
            break
    return new
