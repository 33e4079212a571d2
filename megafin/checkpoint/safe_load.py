"""Reading the pickles of an untrusted checkpoint without running code from it.

A megatron-core `torch_dist` checkpoint holds three kinds of pickles:
- `.metadata`: torch.distributed.checkpoint's `Metadata`, written with plain `pickle.dump`. Read here with a
  restricted unpickler that resolves only METADATA_GLOBALS (looked up from this module's own imports, so a name in
  the file never imports anything) and refuses every other global, persistent id and extension code.
- `common.pt` and the ShardedObjects inside `.distcp` files (RNG state, `_extra_state`, ...): `torch.save` blobs,
  read with `torch.load(weights_only=True)` (torch's own restricted unpickler) plus OBJECT_GLOBALS, the numpy
  pieces of the RNG state.
- the tensors in `.distcp` files: torch itself reads them with `weights_only=True`.

The allowlists are what megafin's own checkpoints hold (fp32, bf16, DistributedOptimizer at DP=2, TP=2, DPO, and the
converter's), found by unpickling them: nothing beyond plain data and these classes' constructors.
"""
from __future__ import annotations

import collections
import contextlib
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
from torch.distributed.checkpoint import filesystem as _dcp_fs
from torch.distributed.checkpoint import metadata as _dcp_md
from torch.distributed.checkpoint import planner as _dcp_planner

from megafin.checkpoint.errors import CheckpointError

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

DCP_METADATA = ".metadata"


def _metadata_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for cls in (_dcp_md.Metadata, _dcp_md.MetadataIndex, _dcp_md.StorageMeta, _dcp_md.TensorProperties,
                _dcp_md.TensorStorageMetadata, _dcp_md.BytesStorageMetadata, _dcp_md.ChunkStorageMetadata,
                _dcp_md._MEM_FORMAT_ENCODING,  # TensorProperties' memory format, an Enum
                _dcp_fs._StorageInfo,  # where each chunk lives: file, byte offset, length
                # megatron-core keeps the savers' plans (`all_local_plans`) in the metadata to reuse them
                _dcp_planner.SavePlan, _dcp_planner.WriteItem, _dcp_planner.WriteItemType,
                _dcp_planner.TensorWriteData):
        allowed[(cls.__module__, cls.__qualname__)] = cls
    allowed[("torch", "Size")] = torch.Size
    for name in dir(torch):  # dtypes pickle as module attributes: torch.float32, torch.bfloat16, ...
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    # Layouts pickle as a call to this lookup by name (str -> torch.layout; nothing else is reachable through it).
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    # Containers that older pickle protocols write as globals.
    allowed[("builtins", "set")] = set
    allowed[("builtins", "frozenset")] = frozenset
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    return allowed


METADATA_GLOBALS = _metadata_globals()

# The RNG state ShardedObject holds numpy's generator state (a uint32 ndarray). numpy 1.x names the module
# numpy.core, numpy 2.x numpy._core: both spellings map to this numpy's function.
OBJECT_GLOBALS: list[Any] = [
    (_np_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_np_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
]


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, where: Path) -> None:
        super().__init__(f)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return METADATA_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(f"{self.where}: refused to load: it references {_clip(module + '.' + name)}, "
                                  f"which a checkpoint's metadata never holds (an untrusted or corrupt file)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.where}: refused to load: persistent id in the metadata (an untrusted or "
                              f"corrupt file)")


def read_dcp_metadata(ckpt_dir: str | Path) -> _dcp_md.Metadata:
    """The checkpoint's torch.distributed.checkpoint Metadata, through the restricted unpickler, its structure
    checked (so a well-formed pickle of the wrong things fails here, not deep inside a load)."""
    path = Path(ckpt_dir) / DCP_METADATA
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a complete torch_dist checkpoint)") from None
    except Exception as err:  # truncated, not a pickle, wrong argument types for an allowed class, ...
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {_first_line(err)})") from None
    _check_structure(md, path)
    if getattr(md, "storage_meta", None) is None:  # as torch's FileSystemReader.read_metadata does
        md.storage_meta = _dcp_md.StorageMeta()
    return md


def _check_structure(md: Any, path: Path) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a torch.distributed.checkpoint metadata file ({what})")

    if not isinstance(md, _dcp_md.Metadata):
        raise bad(f"holds a {type(md).__name__}")
    if not isinstance(md.state_dict_metadata, dict) or not isinstance(md.storage_data, dict):
        raise bad("state_dict_metadata/storage_data are not dicts")
    for key, item in md.state_dict_metadata.items():
        if not isinstance(key, str):
            raise bad(f"key {key!r} is not a string")
        if isinstance(item, _dcp_md.TensorStorageMetadata):
            if not isinstance(item.size, torch.Size) or not isinstance(item.chunks, list) or \
                    not all(isinstance(c, _dcp_md.ChunkStorageMetadata) for c in item.chunks) or \
                    not isinstance(getattr(item.properties, "dtype", None), torch.dtype):
                raise bad(f"tensor {key} has malformed size, dtype or chunks")
        elif not isinstance(item, _dcp_md.BytesStorageMetadata):
            raise bad(f"entry {key} is a {type(item).__name__}")
    for index, info in md.storage_data.items():
        if not isinstance(index, _dcp_md.MetadataIndex) or not isinstance(info, _dcp_fs._StorageInfo):
            raise bad("storage_data entries are not MetadataIndex -> _StorageInfo")
        name = info.relative_path
        # A data file is a plain name in the checkpoint directory: never a path elsewhere on the machine.
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise bad(f"{index.fqn} points at {name!r}, not a file name in the checkpoint directory")
        if not (isinstance(info.offset, int) and isinstance(info.length, int) and info.offset >= 0
                and info.length >= 0):
            raise bad(f"{index.fqn} has a malformed byte range")


def check_data_files(ckpt_dir: str | Path, md: _dcp_md.Metadata) -> None:
    """Every data file the metadata points into exists and is long enough (a crash mid-copy, a lost file)."""
    ckpt_dir = Path(ckpt_dir)
    needed: dict[str, int] = {}
    for info in md.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(needed.items()):
        path = ckpt_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint data file is missing")
        size = path.stat().st_size
        if size < end:
            raise CheckpointError(f"{path}: checkpoint data file is truncated ({size} < {end} bytes)")


@contextlib.contextmanager
def _object_globals() -> Iterator[None]:
    with torch.serialization.safe_globals(OBJECT_GLOBALS):
        yield


def torch_load_restricted(source: str | Path | io.BytesIO, where: str) -> Any:
    """torch.load with weights_only=True (explicit: not the default, which an environment variable can flip) and
    OBJECT_GLOBALS. `where` names the file (and object) in the one-line error."""
    try:
        with _object_globals():
            return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: missing") from None
    except pickle.UnpicklingError as err:  # weights_only refusals: an unexpected global or opcode
        raise CheckpointError(f"{where}: refused to load ({_weights_only_reason(err)}; an untrusted or corrupt "
                              f"file)") from None
    except Exception as err:
        raise CheckpointError(f"{where}: unreadable ({type(err).__name__}: {_first_line(err)})") from None


def _clip(text: str, limit: int = 120) -> str:
    """Text from the file, made one short printable line."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return _clip(lines[0].strip()) if lines else "no details"


def _weights_only_reason(err: BaseException) -> str:
    """torch's weights_only message is a paragraph; the line that says what was refused is the useful one."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "nsupported" in line:
            return _clip(line)
    return _clip(lines[-1]) if lines else "no details"
