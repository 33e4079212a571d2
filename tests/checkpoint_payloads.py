"""Crafted checkpoints for the checkpoint-safety tests: a pickle that would create a file, planted in a real one."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch


class Touch:
    """Unpickling this creates `path`: what a crafted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def replace_object(ckpt: Path, prefix: str, obj) -> str:
    """Point the checkpoint's first ShardedObject `prefix*` at a torch.save blob of `obj` appended to its data file
    (.metadata rewritten holding only its legitimate classes). Returns the object's key."""
    from megafin.checkpoint.safe_load import read_dcp_metadata

    md = read_dcp_metadata(ckpt)
    index, info = next((i, s) for i, s in md.storage_data.items() if i.fqn.startswith(prefix))
    blob = io.BytesIO()
    torch.save([obj], blob)  # megatron-core saves a list of the objects of one key
    path = ckpt / info.relative_path
    info.offset = path.stat().st_size
    info.length = len(blob.getvalue())
    with open(path, "ab") as f:
        f.write(blob.getvalue())
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(md, f)
    return index.fqn
