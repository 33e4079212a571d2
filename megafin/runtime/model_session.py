"""A checkpoint's model in this process: megatron-core process groups (a session) and the model built and loaded.

What reads a checkpoint outside training uses this: eval and generation (megafin/generate) run the loaded model,
convert's from-hf builds a tiny template in a session of one process to learn its checkpoint keys, and the convert
tests check a converted checkpoint. `load_model` goes through the trainer's own `load_checkpoint`; a session works
at TP>1/PP>1 (one rank per process, e.g. under torchrun) as well as in a world of one.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator

import torch

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
    out.parallel.virtual_pp = 1  # one model chunk per rank (checkpoints do not depend on the chunking)
    out.parallel.cp = 1  # whole sequences (context parallelism shards no weight)
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
    model = build_model(model_build_config(cfg, tp, pp), vocab, initialize=False)  # every weight is loaded next
    load_checkpoint(ckpt, model, None, None)
    model.eval()
    return model, cfg, vocab
