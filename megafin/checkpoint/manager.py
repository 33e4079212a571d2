"""Distributed checkpoints under RUN_DIR/checkpoints: step_NNNNNNN/ directories and an atomic `latest` marker.

A save writes `step_N.partial/`, renames it to `step_N/` when every rank has finished, and only then replaces
`latest` (write to a temporary file, fsync, os.replace). A crash at any point leaves `latest` naming the previous
complete checkpoint. Older complete checkpoints beyond `keep_last`, and `step_N.partial/` directories left by
interrupted saves, are removed after the marker moves.

Loading treats the directory as untrusted (it may come from elsewhere): integrity.check_readable and
check_state_matches run before anything is loaded, and dist_load reads every pickle with restricted unpicklers.
Every problem is a CheckpointError: one line naming the file, tensor or marker.
"""
from __future__ import annotations

import dataclasses
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
from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException

from megafin.checkpoint.atomic import write_text_atomic
from megafin.checkpoint.dist_load import load_restricted
from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.in_process_save import InProcessSaveStrategy
from megafin.checkpoint.integrity import check_readable, check_state_matches
from megafin.checkpoint.meta import META, CheckpointMeta
from megafin.runtime.fault_injection import crash_if_injected_in_save

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_PARTIAL_DIR = re.compile(r"^step_(\d+)\.partial$")
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
    """The checkpoint `latest` names, or None without a marker. A marker holding anything but the name of a complete
    checkpoint is a CheckpointError, not a fresh start."""
    marker = checkpoint_root(run_dir) / LATEST
    if not marker.is_file():
        return None
    try:
        name = marker.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{marker}: unreadable ({type(err).__name__}: {err})") from None
    if not _STEP_DIR.match(name):  # also keeps the marker from pointing outside the checkpoints directory
        shown = "".join(c if c.isprintable() else "?" for c in name[:60])
        raise CheckpointError(f"{marker}: expected the name of a checkpoint directory (step_NNNNNNN), got {shown!r}")
    path = marker.parent / name
    if not (path / META).is_file():
        raise CheckpointError(f"{marker}: names {name}, which is not a complete checkpoint (no {name}/{META})")
    return path


def checkpoint_to_resume(run_dir: str | Path) -> tuple[Optional[Path], list[str]]:
    """train.resume=auto: (the checkpoint to resume from, why each newer candidate was passed over).

    The checkpoint `latest` names, when it is readable; otherwise the newest readable complete one, never a silent
    fresh start: with checkpoints but none readable it is a CheckpointError. (None, []) when there are none."""
    root = checkpoint_root(run_dir)
    skipped: list[str] = []
    candidates: list[Path] = []
    try:
        named = latest_checkpoint(run_dir)
    except CheckpointError as err:
        skipped.append(str(err))
        named = None
    if named is not None:
        candidates.append(named)
    elif not (root / LATEST).exists() and _step_dirs(root):
        skipped.append(f"{root / LATEST}: missing, though checkpoints exist")
    candidates += [p for _, p in sorted(_step_dirs(root), reverse=True) if p != named]
    for ckpt in candidates:
        try:
            check_readable(ckpt)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        return ckpt, skipped
    if candidates or skipped:
        raise CheckpointError(f"{root}: no readable checkpoint to resume from: {'; '.join(skipped)}")
    return None, []


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """megafin.json as a dict (CheckpointMeta.read's fields), for tests and tools that index it by key."""
    return dataclasses.asdict(CheckpointMeta.read(ckpt_dir))


def _layout() -> dict[str, int]:
    # parallel.cp shards no weight or state (the config snapshot records it)
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
                         # one copy per TP/PP rank: the data and context parallel ranks hold replicas (Megatron-LM's)
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _model_sharded_state(model: Any) -> dict[str, Any]:
    """The model's sharded state dict; for a list of model chunks (parallel.virtual_pp), one entry per chunk. Their
    tensors are keyed by global layer numbers, so what is saved does not depend on the chunking."""
    if isinstance(model, list):
        return {f"chunk{i}": chunk.sharded_state_dict() for i, chunk in enumerate(model)}
    return model.sharded_state_dict()


def _load_model_state(model: Any, loaded: dict[str, Any]) -> None:
    if isinstance(model, list):
        for i, chunk in enumerate(model):
            chunk.load_state_dict(loaded[f"chunk{i}"])
    else:
        model.load_state_dict(loaded)


def _sharded_state(model: Any, optimizer: Any, scheduler: Any, progress: Progress, is_loading: bool,
                   with_rng: bool) -> dict[str, Any]:
    model_sd = _model_sharded_state(model)
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


def save_checkpoint(run_dir: str | Path, model: Any, optimizer: Any, scheduler: Any, progress: Progress,
                    keep_last: int, extra_meta: Optional[dict[str, Any]] = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory. `model`: a GPTModel or this rank's
    list of model chunks. `extra_meta`: CheckpointMeta's optional fields (vocab_size, config) for megafin.json."""
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
    dist_checkpointing.save(state, str(partial), sharded_strategy=InProcessSaveStrategy(),  # no worker processes
                            validate_access_integrity=True)
    crash_if_injected_in_save(progress.step)
    _barrier()
    if is_writer:
        CheckpointMeta(step=progress.step, consumed_samples=progress.consumed_samples,
                       consumed_tokens=progress.consumed_tokens, layout=_layout(), **(extra_meta or {})).write(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        write_text_atomic(root / LATEST, final.name)
        _prune(root, keep_last, keep=final)
        _remove_stale_partials(root)
    _barrier()
    return final


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    complete = sorted((int(m.group(1)), p) for p in root.iterdir()
                      if (m := _STEP_DIR.match(p.name)) and (p / META).is_file())
    for _, path in complete[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _remove_stale_partials(root: Path) -> None:
    """`step_N.partial/` of saves a crash interrupted: the checkpoint just completed supersedes them."""
    for path in sorted(root.iterdir()):
        if _PARTIAL_DIR.match(path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            print(f"megafin: removed {path} (left by an interrupted save)", flush=True)


def load_checkpoint(ckpt_dir: str | Path, model: Any, optimizer: Any, scheduler: Any) -> Progress:
    """Collective. Loads weights, optimizer, scheduler and progress; RNG too when the layout is unchanged.
    Pass optimizer=None and scheduler=None to take only the weights (train.init_from).

    The checkpoint is untrusted: checked before anything is loaded (CheckpointError, one line, on every rank alike),
    and read without running code from it."""
    meta, md = check_readable(ckpt_dir)
    same_layout = meta.layout == _layout()
    progress = Progress()
    state = _sharded_state(model, optimizer, scheduler, progress, is_loading=True,
                           with_rng=same_layout and optimizer is not None)
    if scheduler is None:
        state.pop("progress")
    check_state_matches(ckpt_dir, md, state)
    loaded = _load(state, Path(ckpt_dir))
    _load_model_state(model, loaded["model"])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
        progress = Progress(**loaded["progress"])
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    return progress


def _load(state: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
    """load_restricted, with what went wrong inside the collective load (a corrupt chunk, a refused object: torch
    gathers every rank's exception and traceback into one CheckpointException) as one line."""
    try:
        return load_restricted(state, ckpt_dir)
    except CheckpointException as err:
        raise _one_line(ckpt_dir, [exc for exc, _ in err.failures.values()]) from None
    except CheckpointingException as err:
        raise _one_line(ckpt_dir, [err]) from None


def _one_line(ckpt_dir: Path, failures: list[BaseException]) -> CheckpointError:
    for exc in failures:
        if isinstance(exc, CheckpointError):
            return exc
    exc = failures[0] if failures else None
    lines = str(exc).strip().splitlines() if exc is not None else []
    return CheckpointError(f"{ckpt_dir}: unreadable ({type(exc).__name__}: {lines[0] if lines else 'no details'})")
