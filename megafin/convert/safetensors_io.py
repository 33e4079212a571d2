"""Safetensors in and out, one tensor at a time.

Reading: `HFWeights` checks the index against the shards (missing shard, a shard whose tensors differ from the
index) before any tensor is read, then hands out tensors one by one. Writing: `write_sharded` plans shards from the
known shapes, then writes each shard's header followed by its tensors as they are produced, so at most one tensor
(plus the fused one it came from) is held at a time on top of the source.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from megafin.convert.errors import ConvertError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_DTYPE_JSON = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_size(text: str) -> int:
    """'5GB' -> 5e9 (decimal, as Hugging Face), '512MiB' -> 512*2**20, '1000' -> 1000 bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ConvertError(f"--max-shard-size: {text!r} is not a size such as 5GB, 500MB or 2GiB")
    unit = (m.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    size = int(float(m.group(1)) * powers[unit])
    if size <= 0:
        raise ConvertError(f"--max-shard-size: {text!r} must be positive")
    return size


_ST_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


def read_header(path: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors file ({key: {dtype, shape, data_offsets}}), with the data start."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        raise ConvertError(f"{path}: not a readable safetensors file ({err})") from None
    header.pop("__metadata__", None)
    data_start = 8 + n
    for key, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry.get("dtype") not in _ST_TORCH or data_start + end > size:
            raise ConvertError(f"{path}: tensor {key} has an unknown dtype or lies past the end of the file")
        entry["start"] = data_start + begin
        entry["nbytes"] = end - begin
    return header


class HFWeights:
    """The tensors of an HF checkpoint directory (model.safetensors or an index with shards), validated.

    Tensors are read with plain file reads into fresh tensors (no mmap): a memory-mapped source would keep every
    page it touched resident in this process."""

    def __init__(self, hf_dir: Path) -> None:
        self.dir = hf_dir
        index = hf_dir / INDEX
        if index.is_file():
            try:
                weight_map: dict[str, str] | None = json.loads(index.read_text())["weight_map"]
                assert isinstance(weight_map, dict)
            except (ValueError, KeyError, TypeError, AssertionError) as err:
                raise ConvertError(f"{index}: not a safetensors index (needs a weight_map): {err}") from None
            shards = sorted(set(weight_map.values()))
            for name in shards:
                if not (hf_dir / name).is_file():
                    raise ConvertError(f"{hf_dir / name}: shard listed in {INDEX} is missing")
        elif (hf_dir / SINGLE).is_file():
            weight_map = None
            shards = [SINGLE]
        else:
            raise ConvertError(f"{hf_dir}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
        self.entries: dict[str, dict[str, Any]] = {}
        self.where: dict[str, str] = {}
        for name in shards:
            path = hf_dir / name
            header = read_header(path)
            keys = set(header)
            if weight_map is not None:
                listed = {k for k, v in weight_map.items() if v == name}
                if keys != listed:
                    missing, extra = sorted(listed - keys), sorted(keys - listed)
                    what = (f"tensor {missing[0]} listed in {INDEX} is not in it" if missing
                            else f"holds tensor {extra[0]} that {INDEX} does not list for it")
                    raise ConvertError(f"{path}: does not match the index: {what}")
            for k in keys:
                self.where[k] = name
                self.entries[k] = header[k]

    def keys(self) -> list[str]:
        return list(self.where)

    def file_of(self, key: str) -> Path:
        return self.dir / self.where[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> str:
        return self.entries[key]["dtype"]

    def get(self, key: str) -> torch.Tensor:
        if key not in self.where:
            raise ConvertError(f"{self.dir}: tensor {key} is missing")
        e = self.entries[key]
        t = torch.empty(e["shape"], dtype=_ST_TORCH[e["dtype"]])
        if t.nbytes != e["nbytes"]:
            raise ConvertError(f"{self.file_of(key)}: tensor {key}: {e['nbytes']} bytes for shape {e['shape']}")
        if t.nbytes:
            with open(self.file_of(key), "rb", buffering=0) as f:
                f.seek(e["start"])
                buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                done = 0
                while done < t.nbytes:
                    n = f.readinto(buf[done:])
                    if not n:
                        raise ConvertError(f"{self.file_of(key)}: tensor {key} is truncated")
                    done += n
        return t


def plan_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Consecutive runs of keys, each run at most max_bytes (a single larger tensor gets a shard of its own)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        n = itemsize
        for dim in shape:
            n *= dim
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def _header(keys: list[str], shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> tuple[bytes, int]:
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in keys:
        n = itemsize
        for dim in shapes[key]:
            n *= dim
        header[key] = {"dtype": ST_DTYPES[dtype], "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return raw, offset


def write_sharded(out_dir: Path, shapes: dict[str, tuple[int, ...]], tensors: Iterable[tuple[str, torch.Tensor]],
                  dtype: torch.dtype, max_bytes: int) -> dict[str, Any]:
    """Write `tensors` (yielded in `shapes` order) as model-0000x-of-0000y.safetensors + the index; returns it."""
    plan = plan_shards(shapes, dtype, max_bytes)
    it: Iterator[tuple[str, torch.Tensor]] = iter(tensors)
    weight_map: dict[str, str] = {}
    total = 0
    for n, keys in enumerate(plan, start=1):
        name = f"model-{n:05d}-of-{len(plan):05d}.safetensors"
        header, size = _header(keys, shapes, dtype)
        with open(out_dir / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for want in keys:
                key, t = next(it)
                if key != want or tuple(t.shape) != shapes[key]:
                    raise ConvertError(f"internal: produced {key} {tuple(t.shape)}, expected {want} {shapes[want]}")
                t = t.to(dtype).contiguous()
                f.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
                weight_map[key] = name
        total += size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index
