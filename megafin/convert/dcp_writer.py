"""Write a megatron-core `torch_dist` checkpoint tensor by tensor, without building the model.

What megatron's dist_checkpointing.save writes for a model saved at TP=1/PP=1, produced directly: each tensor goes
to the data file as one `torch.save` blob the moment it is built, so peak memory is about one tensor, not the model.
Files: `__0_0.distcp` (blobs), `.metadata` (torch.distributed.checkpoint Metadata, pickled), `common.pt` and
`metadata.json` (megatron's backend markers). Per-layer tensors are chunks (one per layer) of a global tensor
stacked on a leading layer axis, as megatron's sharded keys define them; dist_checkpointing reshards from these
chunks to any TP/PP on load.

Which keys and `_extra_state` objects the model has is megafin.models.megatron_keys' to say (`sharded_shapes`,
`sharded_objects`): the writer never imports megatron-core, which would cost seconds of a conversion that is
otherwise IO. `template_sharded_items` builds megafin's own GPTModel (same layer count, tiny widths) and lists what
it saves; the tests hold megatron_keys to it, so the files match what `load_checkpoint` will ask for.

Blobs are written without the zip CRC32 torch.save computes by default: torch.load never checks it (a flipped data
byte loads silently either way), and computing it halves the write speed.
"""
from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from typing import Any, Iterable

import torch

from megafin.config.schema import Config
from megafin.convert.errors import ConvertError
from megafin.models import megatron_keys

DATA_FILE = "__0_0.distcp"
MEGATRON_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                     "common_backend_version": 1}


def template_sharded_items(cfg: Config) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """(ShardedTensor keys -> global shape, ShardedObject unique keys -> data) of megafin's model with this config's
    layer count and embedding tying, at tiny widths (only the keys are used). Needs no process group of the caller:
    it runs in a megatron session of its own."""
    import copy

    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

    from megafin.models.gpt import build_model
    from megafin.runtime.model_session import megatron_session, model_build_config

    tiny = copy.deepcopy(cfg)
    m = tiny.model
    m.hidden_size, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size = 8, 2, 1, 8
    m.rope_scaling.type = "none"
    tiny.precision.dtype = "fp32"
    with megatron_session(1, 1, tiny.train.seed):
        model = build_model(model_build_config(tiny, 1, 1), 8)
        tensors: dict[str, tuple[int, ...]] = {}
        objects: dict[str, Any] = {}
        for item in model.sharded_state_dict().values():
            if isinstance(item, ShardedTensor):
                tensors[item.key] = tuple(item.global_shape)
            elif isinstance(item, ShardedTensorFactory):
                tensors[item.key] = ()
            elif isinstance(item, ShardedObject):
                objects[item.unique_key] = item.data
    return tensors, objects


class DistCheckpointWriter:
    """Chunks are added one at a time (`add`); `finish` writes the metadata. One data file, rank 0's name."""

    def __init__(self, out_dir: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
        from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, TensorProperties,
                                                           TensorStorageMetadata)

        self.dir = out_dir
        self.dtype = dtype
        self.f = open(out_dir / DATA_FILE, "wb", buffering=0)  # torch.save to a buffered file is ~2.5x slower
        self.storage: dict[Any, Any] = {}
        self.meta: dict[str, Any] = {
            key: TensorStorageMetadata(properties=TensorProperties(dtype=dtype), size=torch.Size(shape), chunks=[])
            for key, shape in shapes.items()}
        self._chunk_cls = ChunkStorageMetadata

    def _blob(self, fqn: str, offsets: Any, obj: Any) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import MetadataIndex

        import torch.utils.serialization as serialization

        start = self.f.tell()
        with serialization.config.patch({"save.compute_crc32": False}):
            torch.save(obj, self.f)
        self.storage[MetadataIndex(fqn, offsets)] = _StorageInfo(DATA_FILE, start, self.f.tell() - start)

    def add(self, key: str, layer: int | None, tensor: torch.Tensor) -> None:
        """`tensor` is the whole global tensor of `key` (layer None) or its slice `layer` of the layer axis."""
        meta = self.meta[key]
        t = tensor.to(self.dtype).contiguous()
        if layer is not None:
            t = t.unsqueeze(0)
        offsets = torch.Size([layer or 0] + [0] * (t.dim() - 1))
        want = (1, *meta.size[1:]) if layer is not None else tuple(meta.size)
        if tuple(t.shape) != want:
            raise ConvertError(f"internal: {key} layer {layer}: built {list(t.shape)}, expected {list(want)}")
        if t.untyped_storage().nbytes() != t.nbytes:  # torch.save writes whole storages: never a view's base
            t = t.clone()
        self._blob(key, offsets, t)
        meta.chunks.append(self._chunk_cls(offsets=offsets, sizes=torch.Size(t.shape)))

    def add_objects(self, objects: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata

        for unique_key, data in objects.items():
            self.meta[unique_key] = BytesStorageMetadata()
            self._blob(unique_key, None, [data])  # megatron saves a list of the objects sharing a key

    def finish(self, common: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        self.f.close()
        for key, meta in self.meta.items():
            if hasattr(meta, "chunks"):
                covered = sum(int(torch.Size(c.sizes).numel()) for c in meta.chunks)
                if covered != meta.size.numel():
                    raise ConvertError(f"internal: {key}: chunks cover {covered} of {meta.size.numel()} elements")
        md = Metadata(state_dict_metadata=self.meta, planner_data=None, storage_data=self.storage,
                      storage_meta=StorageMeta(checkpoint_id=str(self.dir), save_id=str(uuid.uuid4())),
                      version="1.0.0")
        with open(self.dir / ".metadata", "wb") as f:
            pickle.dump(md, f)
        torch.save(common, self.dir / "common.pt")
        (self.dir / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))


def write_model_checkpoint(out_dir: Path, cfg: Config, padded_vocab: int,
                           megatron_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> None:
    """All of the model's tensors (megatron state-dict keys, as an adapter yields them) into a torch_dist checkpoint
    with the sharded keys and _extra_state objects of megafin's GPTModel (as megatron_keys lists them)."""
    shapes = megatron_keys.sharded_shapes(cfg.model, padded_vocab)
    objects = megatron_keys.sharded_objects(cfg.model)
    writer = DistCheckpointWriter(out_dir, shapes, dtype)
    for key, tensor in megatron_tensors:
        skey, layer = megatron_keys.sharded_location(key)
        writer.add(skey, layer, tensor)
        del tensor
    writer.add_objects(objects)
    writer.finish({"progress": {"step": 0, "consumed_samples": 0, "consumed_tokens": 0}})
