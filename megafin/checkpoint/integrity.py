"""Cheap checks that a checkpoint is complete and fits the model, before any of it is loaded.

A broken checkpoint must fail with one line before the first tensor is copied into the model: otherwise a resume
could stop halfway with a model that is partly the checkpoint and partly the initialization. Everything here reads
only small files (megafin.json, metadata.json, .metadata) and file sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.meta import CheckpointMeta, read_json_object
from megafin.checkpoint.safe_load import check_data_files, read_dcp_metadata

MEGATRON_CONFIG = "metadata.json"  # megatron-core's backend marker
COMMON = "common.pt"
_BACKENDS = {"sharded_backend": "torch_dist", "common_backend": "torch"}


def check_readable(ckpt_dir: str | Path) -> tuple[CheckpointMeta, Metadata]:
    """megafin.json and metadata.json parse, `.metadata` passes the restricted unpickler, and every data file it
    points into exists and is long enough. Returns (megafin.json, the DCP metadata)."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a checkpoint directory (it does not exist)" if not ckpt.exists()
                              else f"{ckpt}: not a checkpoint directory (it is a file)")
    meta = CheckpointMeta.read(ckpt)
    backend = read_json_object(ckpt / MEGATRON_CONFIG, "not a megatron-core distributed checkpoint")
    for key, want in _BACKENDS.items():
        if backend.get(key) != want:
            raise CheckpointError(f"{ckpt / MEGATRON_CONFIG}: {key} is {backend.get(key)!r}, expected {want!r}")
    md = read_dcp_metadata(ckpt)
    check_data_files(ckpt, md)
    if not (ckpt / COMMON).is_file():
        raise CheckpointError(f"{ckpt / COMMON}: missing")
    return meta, md


def check_state_matches(ckpt_dir: str | Path, md: Metadata, sharded_state_dict: dict[str, Any]) -> None:
    """Every tensor and object the model (and optimizer) will ask for is in the checkpoint, at the same global
    shape. megatron-core finds this too, but only inside the collective load, as a multi-rank traceback."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
    from megatron.core.dist_checkpointing.state_dict_utils import load_preprocess

    ckpt = Path(ckpt_dir)
    flat, _, _ = load_preprocess(sharded_state_dict)  # a copy with factories (e.g. fused fc1) applied
    saved = md.state_dict_metadata
    for item in nested_values(flat):
        if isinstance(item, ShardedTensor):
            entry = saved.get(item.key)
            if entry is None:
                hint = " (it holds no optimizer state: train.init_from loads weights only)" \
                    if item.key.startswith("optimizer.") else ""
                raise CheckpointError(f"{ckpt}: tensor {item.key} is not in the checkpoint{hint}")
            if not isinstance(entry, TensorStorageMetadata):
                raise CheckpointError(f"{ckpt}: {item.key} is saved as an object, the model expects a tensor")
            if not item.allow_shape_mismatch and tuple(entry.size) != tuple(item.global_shape):
                raise CheckpointError(f"{ckpt}: tensor {item.key} has shape {list(entry.size)} in the checkpoint, "
                                      f"the model expects {list(item.global_shape)} (was the model config changed?)")
        elif isinstance(item, ShardedObject) and item.unique_key not in saved:
            raise CheckpointError(f"{ckpt}: object {item.unique_key} is not in the checkpoint")
