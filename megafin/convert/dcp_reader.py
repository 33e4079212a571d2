"""Read a megatron-core `torch_dist` checkpoint tensor by tensor, without building the model.

A torch_dist checkpoint is a torch.distributed.checkpoint (DCP) directory: `.metadata` lists, for every sharded key,
its global shape and the chunks each rank saved (offsets, sizes), and where each chunk lives (file, byte offset,
length; each chunk is one `torch.save` blob). megatron-core's keys are layout-free: the global tensor of a key is the
same whatever TP/PP it was saved at (per-layer tensors are stacked on a leading layer axis; `linear_fc1` is
[gate; up]; `linear_qkv` keeps megatron's per-group order), so reading a region of the global tensor from whichever
chunks overlap it is resharding. Peak memory: one region plus one chunk.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import torch

from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.safe_load import check_data_files, read_dcp_metadata
from megafin.convert.errors import ConvertError


class _FileSlice(io.RawIOBase):
    """A read-only window [start, start+length) of an open file, seekable, for torch.load (no copy to bytes)."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + offset))
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.length - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(memoryview(buf)[:n])
        self.pos += got
        return got


class DistCheckpointReader:
    """`.metadata` is read by megafin's restricted unpickler (an untrusted checkpoint runs no code), the chunks by
    torch.load(weights_only=True)."""

    def __init__(self, ckpt: Path) -> None:
        self.dir = ckpt
        try:
            self.md = read_dcp_metadata(ckpt)
        except CheckpointError as err:
            raise ConvertError(str(err)) from None
        self._files: dict[str, Any] = {}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def check_files(self) -> None:
        """Every data file the metadata points into exists and is long enough."""
        try:
            check_data_files(self.dir, self.md)
        except CheckpointError as err:
            raise ConvertError(str(err)) from None

    def shape(self, key: str) -> Optional[tuple[int, ...]]:
        meta = self.md.state_dict_metadata.get(key)
        return tuple(meta.size) if meta is not None and hasattr(meta, "chunks") else None

    def _load_chunk(self, key: str, offsets: Any) -> torch.Tensor:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = self.md.storage_data[MetadataIndex(key, offsets)]
        if getattr(info, "transform_descriptors", None):
            raise ConvertError(f"{self.dir / info.relative_path}: {key}: transformed (e.g. compressed) chunks are "
                               f"not supported")
        f = self._files.get(info.relative_path)
        if f is None:
            f = self._files[info.relative_path] = open(self.dir / info.relative_path, "rb", buffering=0)
        try:
            return torch.load(io.BufferedReader(_FileSlice(f, info.offset, info.length), 1 << 20),
                              map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConvertError(f"{self.dir / info.relative_path}: chunk of {key} at byte {info.offset} is "
                               f"unreadable ({type(err).__name__}: {err})") from None

    def read(self, key: str, layer: Optional[int] = None) -> torch.Tensor:
        """The global tensor of `key`, or its slice `layer` along the leading (stacked layers) axis."""
        meta = self.md.state_dict_metadata.get(key)
        if meta is None or not hasattr(meta, "chunks"):
            raise ConvertError(f"{self.dir}: tensor {key} is not in the checkpoint")
        size = tuple(meta.size)
        r_off = [0] * len(size)
        r_size = list(size)
        if layer is not None:
            r_off[0], r_size[0] = layer, 1
        out: Optional[torch.Tensor] = None
        covered, volume = 0, 1
        for n in r_size:
            volume *= n
        for chunk in meta.chunks:
            c_off, c_size = tuple(chunk.offsets), tuple(chunk.sizes)
            lo = [max(a, b) for a, b in zip(c_off, r_off)]
            hi = [min(a + s, b + t) for a, s, b, t in zip(c_off, c_size, r_off, r_size)]
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            t = self._load_chunk(key, chunk.offsets)
            if list(c_off) == r_off and list(c_size) == r_size:  # one chunk is exactly the region
                out, covered = t, volume
                break
            if out is None:
                out = torch.empty(r_size, dtype=t.dtype)
            src = tuple(slice(l - c, h - c) for l, h, c in zip(lo, hi, c_off))
            dst = tuple(slice(l - r, h - r) for l, h, r in zip(lo, hi, r_off))
            out[dst] = t[src]
            part = 1
            for l, h in zip(lo, hi):
                part *= h - l
            covered += part
            del t
        if out is None or covered != volume:
            where = f" layer {layer}" if layer is not None else ""
            raise ConvertError(f"{self.dir}: tensor {key}{where} is not fully covered by the saved chunks")
        return out[0] if layer is not None else out
