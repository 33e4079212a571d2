"""A multi-file output appears as one set, or visibly not at all; readers check with `check_complete`.

A POSIX directory cannot rename several files at once, and Megatron expects plain `PREFIX.bin`/`.idx` files
beside other datasets, so a data_prep output (`.bin` + `.idx` + stats, or the packed triplets + meta) is
committed in this order (`commit`):
1. every file is complete under a temporary name (`X.tmp.bin`, ...);
2. the marker `DATASET.incomplete` is written (DATASET: the prefix a recipe names, `OUT_text_document` for
   pretrain, `OUT` for packed data);
3. the files are renamed over their final names, one by one;
4. side files, then the manifest are written: the manifest (`OUT_stats.json` for pretrain, `OUT_meta.json`
   for packed data) records every file's size under `file_bytes`;
5. the marker is removed.
A crash before 2 leaves the previous output intact; a crash in 3-5 leaves the marker, so the mixed set is
refused. A file swapped or truncated later (partial copy) no longer matches the manifest's sizes.
Importing this module costs nothing beyond the standard library: the trainer's config validation calls it.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

MARKER_SUFFIX = ".incomplete"
PRETRAIN_SUFFIX = "_text_document"


class OutputError(Exception):
    """An output location data_prep cannot write (str() names it and what was expected)."""


def check_writable_dir(directory: str | os.PathLike, flag: str) -> None:
    """Create `directory` if needed and prove a file can be created in it, before any work is done.

    A real probe file rather than os.access: it also catches read-only filesystems and holds for root.
    """
    d = Path(directory)
    try:
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (d, *d.parents) if p.exists()), d)  # the file standing where a directory must
        raise OutputError(f"{blocker}: not a directory (expected a writable directory for {flag})") from None
    except OSError as e:
        raise OutputError(f"{d}: cannot create the output directory for {flag}: {e.strerror}") from None
    error = file_creation_error(d)
    if error is not None:
        raise OutputError(f"{d}: output directory is not writable ({error.strerror}; expected a writable "
                          f"directory for {flag})")


def file_creation_error(directory: str | os.PathLike) -> Optional[OSError]:
    """Why a file cannot be created in `directory`, or None when it can (a probe file is created and removed).
    A real creation, not os.access: it catches read-only filesystems and holds for root."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
    except OSError as e:
        return e
    os.close(fd)
    os.remove(probe)
    return None


def check_output_prefix(prefix: str) -> None:
    check_writable_dir(os.path.dirname(str(prefix)) or ".", f"--output-prefix {prefix}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """One JSON file, replaced atomically (written under a temporary name, then renamed)."""
    tmp = str(path) + ".tmp"
    Path(tmp).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def commit(dataset: str, renames: Iterable[tuple[str, str]], manifest_path: str, manifest: dict,
           side_files: Iterable[tuple[str, Any]] = ()) -> None:
    """Steps 2-5 of the module docstring. `renames`: (temporary, final) paths; `manifest` gains `file_bytes`."""
    renames = list(renames)
    marker = dataset + MARKER_SUFFIX
    write_json(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "replacing": [os.path.basename(final) for _, final in renames]})
    for tmp, final in renames:
        os.replace(tmp, final)
    for path, obj in side_files:
        write_json(path, obj)
    manifest["file_bytes"] = {os.path.basename(final): os.path.getsize(final) for _, final in renames}
    write_json(manifest_path, manifest)
    os.remove(marker)


def discard(renames: Iterable[tuple[str, str]]) -> None:
    """Remove the temporary files of a commit that did not happen (or stopped): they are no output."""
    for tmp, _ in renames:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass


def manifest_paths(dataset: str) -> list[str]:
    """Where data_prep's manifest of `dataset` lives: OUT_meta.json (packed) or OUT_stats.json (pretrain)."""
    out = [f"{dataset}_meta.json"]
    if dataset.endswith(PRETRAIN_SUFFIX):
        out.append(dataset[: -len(PRETRAIN_SUFFIX)] + "_stats.json")
    return out


def check_complete(dataset: str) -> Optional[str]:
    """None when the data_prep output `dataset` is a complete set, else one line saying what is wrong.

    `dataset` is what a recipe names: `OUT_text_document` (pretrain) or `OUT` (packed). Refused: a set whose
    commit was interrupted (the `.incomplete` marker), and a set whose files differ in size from what the
    manifest recorded. Sets without a data_prep manifest (Megatron-LM's preprocess_data.py, older data_prep)
    are accepted: there is nothing to check them against. Missing files of such sets are not reported here.
    """
    dataset = str(dataset)
    marker = dataset + MARKER_SUFFIX
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                info = json.load(f)
            who = f" by pid {info.get('pid')} on {info.get('host')} at {info.get('started')}"
        except (OSError, ValueError, AttributeError):
            who = ""
        return (f"{dataset}: incomplete data_prep output ({marker} exists: the run{who} stopped while replacing "
                f"its files, so they may mix two runs); rerun data_prep for this output")
    for path in manifest_paths(dataset):
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            return f"{path}: unreadable data_prep manifest ({e}); rerun data_prep for this output"
        sizes = manifest.get("file_bytes") if isinstance(manifest, dict) else None
        if not isinstance(sizes, dict) or not any(name.startswith(os.path.basename(dataset)) for name in sizes):
            continue  # not a manifest of this dataset (older data_prep, or another output's stats)
        folder = os.path.dirname(dataset)
        for name, want in sizes.items():
            p = os.path.join(folder, name)
            if not os.path.isfile(p):
                return f"{p}: missing (listed in {path}); rerun data_prep for this output"
            got = os.path.getsize(p)
            if got != want:
                return (f"{p}: {got:,} bytes but {path} records {want:,} (the files are not one data_prep output: "
                        "an interrupted run or a partial copy?); rerun data_prep for this output")
    return None
