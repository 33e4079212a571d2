"""megatron-core's `dist_checkpointing.load` with every pickle of the checkpoint read by megafin's restricted readers.

`dist_checkpointing.load` takes its load strategies as arguments; megafin passes its own (no patching):
- `RestrictedCommonLoadStrategy` reads `common.pt` with `torch.load(weights_only=True)` (megatron-core's calls
  torch.load without the argument, leaving it to torch's default and the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD variable).
- `RestrictedTorchDistLoadStrategy` is megatron-core's `TorchDistLoadShardedStrategy` whose `load` builds a reader
  and planner of its own: `.metadata` goes through safe_load's restricted unpickler (torch's FileSystemReader calls
  pickle.load), and the ShardedObjects (RNG state, `_extra_state`) through torch.load(weights_only=True) (torch's
  DefaultLoadPlanner.load_bytes passes weights_only=False). The tensors torch itself reads with weights_only=True.
`metadata.json` is JSON (megatron-core's json.load) and is checked before loading by `integrity.check_readable`.

`load` below is TorchDistLoadShardedStrategy.load of megatron-core 0.16 with only the reader and the planner
replaced. It uses these megatron-core internals (keep them in the dependency index): strategies.torch's
TorchDistLoadShardedStrategy, MCoreLoadPlanner, _replace_state_dict_keys_with_sharded_keys,
mcore_to_pyt_state_dict, _unwrap_pyt_sharded_tensor, _replace_sharded_keys_with_state_dict_keys,
_restore_dict_types; strategies.cached_metadata_filesystem_reader.CachedMetadataFileSystemReader;
strategies.common.TorchCommonLoadStrategy, COMMON_STATE_FNAME; and torch's
torch.distributed.checkpoint._traverse.set_element (what DefaultLoadPlanner.load_bytes stores an object with).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace, nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader,
)
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME, TorchCommonLoadStrategy
from torch.distributed import checkpoint as torch_dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

from megafin.checkpoint.safe_load import read_dcp_metadata, torch_load_restricted


class RestrictedFileSystemReader(CachedMetadataFileSystemReader):
    """torch's FileSystemReader with `.metadata` read by the restricted unpickler (and cached, as megatron's)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self._cached_metadata is None:
            md = read_dcp_metadata(self.path)
            md.storage_meta.load_id = self.load_id  # as FileSystemReader.read_metadata does
            self._cached_metadata = md
        return self._cached_metadata


class RestrictedLoadPlanner(mcore_torch.MCoreLoadPlanner):
    """megatron-core's load planner with ShardedObjects unpickled by torch.load(weights_only=True)."""

    def __init__(self, *args: Any, checkpoint_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_dir = checkpoint_dir

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = torch_load_restricted(value, f"{self.checkpoint_dir}: object {fqn}")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


class RestrictedTorchDistLoadStrategy(mcore_torch.TorchDistLoadShardedStrategy):
    def load(self, sharded_state_dict: Any, checkpoint_dir: Union[str, Path]) -> Any:
        flexible_shape_sharded_tensors = [
            sh_ten for sh_ten in nested_values(sharded_state_dict)
            if isinstance(sh_ten, ShardedTensor) and not sh_ten.allow_shape_mismatch
        ]
        allow_shape_mismatch_sharded_tensors = {
            sh_ten.key: sh_ten for sh_ten in nested_values(sharded_state_dict)
            if isinstance(sh_ten, ShardedTensor) and sh_ten.allow_shape_mismatch
        }
        orig_sharded_state_dict = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = \
            mcore_torch._replace_state_dict_keys_with_sharded_keys(sharded_state_dict)
        pyt_state_dict = mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        fsr = RestrictedFileSystemReader(checkpoint_dir)
        torch_dcp.load_state_dict(
            pyt_state_dict, fsr,
            planner=RestrictedLoadPlanner(
                shapes_validation_sharded_tensors=flexible_shape_sharded_tensors,
                allow_shape_mismatch_sharded_tensors=allow_shape_mismatch_sharded_tensors,
                checkpoint_dir=Path(checkpoint_dir)))
        self.cached_global_metadata = fsr.read_metadata()
        mcore_state_dict = {k: mcore_torch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        mcore_state_dict = mcore_torch._replace_sharded_keys_with_state_dict_keys(
            mcore_state_dict, flat_mapping, rename_mapping)
        mcore_torch._restore_dict_types(mcore_state_dict, orig_sharded_state_dict)
        return mcore_state_dict

    def load_tensors_metadata(self, checkpoint_dir: Path, metadata: Any = None) -> Any:
        return super().load_tensors_metadata(checkpoint_dir, metadata or read_dcp_metadata(checkpoint_dir))

    def load_sharded_metadata(self, checkpoint_dir: Path) -> Any:
        # megatron-core's, with the restricted metadata reader (read only by strict modes megafin does not use)
        metadata = read_dcp_metadata(checkpoint_dir)
        sharded_metadata = {}
        for key, storage_metadata in metadata.state_dict_metadata.items():
            if isinstance(storage_metadata, BytesStorageMetadata):
                sh_obj = ShardedObject.empty_from_unique_key(key)
                sharded_metadata[sh_obj.unique_key] = sh_obj
        sharded_metadata.update(self.load_tensors_metadata(checkpoint_dir, metadata))
        return sharded_metadata


class RestrictedCommonLoadStrategy(TorchCommonLoadStrategy):
    def load_common(self, checkpoint_dir: Union[str, Path]) -> Any:
        path = Path(checkpoint_dir) / COMMON_STATE_FNAME
        return torch_load_restricted(path, str(path))

    def load_sharded_objects(self, sharded_objects_state_dict: Any, checkpoint_dir: Union[str, Path]) -> Any:
        # Only used with a sharded strategy that cannot read ShardedObjects itself; torch_dist's can.
        def load(sh_obj: Any) -> Any:
            path = Path(checkpoint_dir) / f"{sh_obj.unique_key}.pt"
            return torch_load_restricted(path, str(path))

        return dict_list_map_inplace(load, sharded_objects_state_dict)


def load_restricted(sharded_state_dict: Any, checkpoint_dir: Union[str, Path]) -> Any:
    """dist_checkpointing.load(sharded_state_dict, checkpoint_dir) with no code from the checkpoint run."""
    return dist_checkpointing.load(sharded_state_dict, str(checkpoint_dir),
                                   sharded_strategy=RestrictedTorchDistLoadStrategy(),
                                   common_strategy=RestrictedCommonLoadStrategy())
