"""Distributed checkpoints under RUN_DIR/checkpoints: step_NNNNNNN/ directories and an atomic `latest` marker.

A save writes `step_N.partial/`, renames it to `step_N/` when every rank has finished, and only then replaces
`latest` (write to a temporary file, fsync, os.replace). A crash at any point leaves `latest` naming the previous
complete checkpoint. Older complete checkpoints beyond `keep_last` are removed after the marker moves.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel import get_cuda_rng_tracker

LATEST = "latest"
META = "megafin.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# The DistributedOptimizer's only sharding type that loads at another layout and works with torch's Adam.
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


@dataclass
class Progress:
    step: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The checkpoint `latest` names, or None. A marker naming a missing directory is an error, not a fresh start."""
    marker = checkpoint_root(run_dir) / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    path = marker.parent / name
    if not (path / META).is_file():
        raise RuntimeError(f"{marker}: names {name}, which is not a complete checkpoint")
    return path


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / META).read_text())


def _layout() -> dict[str, int]:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def _rng_object() -> ShardedObject:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    return ShardedObject("rng_state", state, (_layout()["pp"], _layout()["tp"]), (pp_rank, tp_rank),
                         replica_id=parallel_state.get_data_parallel_rank())


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(model: Any, optimizer: Any, scheduler: Any, progress: Progress, is_loading: bool,
                   with_rng: bool) -> dict[str, Any]:
    model_sd = model.sharded_state_dict()
    state: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=_OPTIM_METADATA)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["progress"] = vars(progress).copy()
    if with_rng:
        state["rng_state"] = _rng_object()
    return state


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(run_dir: str | Path, model: Any, optimizer: Any, scheduler: Any, progress: Progress,
                    keep_last: int, extra_meta: Optional[dict[str, Any]] = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = checkpoint_root(run_dir)
    final = root / step_dir_name(progress.step)
    partial = root / (final.name + ".partial")
    is_writer = not dist.is_initialized() or dist.get_rank() == 0
    if is_writer:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier attempt
        partial.mkdir()
    _barrier()
    state = _sharded_state(model, optimizer, scheduler, progress, is_loading=False, with_rng=True)
    dist_checkpointing.save(state, str(partial), validate_access_integrity=True)
    _crash_if_injected(progress.step)
    _barrier()
    if is_writer:
        meta = {"step": progress.step, "consumed_samples": progress.consumed_samples,
                "consumed_tokens": progress.consumed_tokens, "layout": _layout(), **(extra_meta or {})}
        _write_atomic(partial / META, json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_atomic(root / LATEST, final.name)
        _prune(root, keep_last, keep=final)
    _barrier()
    return final


def _crash_if_injected(step: int) -> None:
    """Fault injection for drills and tests: MEGAFIN_FAULT_CRASH_IN_SAVE=<step> kills the process after the shards
    are written but before the checkpoint is complete, as a node failure mid-save would."""
    if os.environ.get("MEGAFIN_FAULT_CRASH_IN_SAVE") == str(step):
        print(f"megafin: fault injection: crashing while saving step {step}", flush=True)
        os._exit(86)


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    complete = sorted((int(m.group(1)), p) for p in root.iterdir()
                      if (m := _STEP_DIR.match(p.name)) and (p / META).is_file())
    for _, path in complete[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(ckpt_dir: str | Path, model: Any, optimizer: Any, scheduler: Any) -> Progress:
    """Collective. Loads weights, optimizer, scheduler and progress; RNG too when the layout is unchanged.
    Pass optimizer=None and scheduler=None to take only the weights (train.init_from)."""
    meta = read_meta(ckpt_dir)
    same_layout = meta.get("layout") == _layout()
    progress = Progress()
    state = _sharded_state(model, optimizer, scheduler, progress, is_loading=True,
                           with_rng=same_layout and optimizer is not None)
    if scheduler is None:
        state.pop("progress")
    loaded = dist_checkpointing.load(state, str(ckpt_dir))
    model.load_state_dict(loaded["model"])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
        progress = Progress(**loaded["progress"])
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    return progress
