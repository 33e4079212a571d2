"""Stage stamps: what a stage's outputs were made from, so that a rerun knows what is still valid.

A stage's stamp is a hash of its kind, its settings (as written, minus the kind's `unstamped` keys), the contents
of every file or directory its settings name outside the pipeline (recipes, corpora, task files), and the stamps
of the stages it references. Stamps are computed from the YAML and the input files alone, before anything runs
(so --slurm knows every stage's stamp at submission), and a change anywhere upstream changes every stamp
downstream of it.

In the stage's directory, `.pipeline/started.json` holds the stamp of the attempt under way and
`.pipeline/done.json` the stamp of a finished one (written last, atomically). done == stamp: skip;
started == stamp but not done: resume in place (or start over, for kinds that do not resume); anything else: the
directory is emptied and the stage runs from scratch."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from megafin.checkpoint.atomic import write_text_atomic
from megafin.pipeline.spec import PipelineSpec, Reference, StageSpec

STATE = ".pipeline"
HASH_CACHE = ".file_hashes.json"


class FileHasher:
    """sha256 of file contents, cached by (path, size, mtime) in OUT/.file_hashes.json: corpora are hashed once,
    not on every rerun."""

    def __init__(self, cache_path: Optional[Path] = None) -> None:
        self.cache_path = cache_path
        self.cache: dict = {}
        self.dirty = False
        if cache_path is not None and cache_path.is_file():
            try:
                self.cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                self.cache = {}

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.cache[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        self.dirty = True
        return h.hexdigest()

    def path(self, path: Path) -> str:
        """A file's hash, or a directory's: the hashes of its files by relative name (hidden entries skipped)."""
        if path.is_file():
            return self.file(path)
        h = hashlib.sha256()
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                p = Path(root) / name
                h.update(f"{p.relative_to(path)}\0{self.file(p)}\0".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.cache_path is not None and self.dirty:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.cache_path, json.dumps(self.cache, indent=0, sort_keys=True))
            self.dirty = False


def _canonical(value: Any, stamps: dict[str, str], hasher: FileHasher, files: dict[str, str]) -> Any:
    """Settings with references replaced by the referenced stage's stamp and existing paths by their content
    hash (recorded in `files`)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v, stamps, hasher, files) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [_canonical(v, stamps, hasher, files) for v in value]
    if isinstance(value, str):
        ref = Reference.parse(value)
        if ref is not None:
            return {"stage": ref.stage, "stamp": stamps[ref.stage], "sub": ref.sub}
        text = value.strip()
        # Only what looks like a path ("a/b", "x.yaml"): a bare word such as a set name is a setting, even where a
        # file of that name happens to exist in the working directory.
        if text and len(text) < 4096 and "\n" not in text and ("/" in text or Path(text).suffix):
            p = Path(text).expanduser()
            try:
                exists = p.exists()
            except OSError:
                exists = False
            if exists:
                files[text] = hasher.path(p)
                return {"path": text, "sha256": files[text]}
    return value


def stage_stamp(stage: StageSpec, stamps: dict[str, str], hasher: FileHasher, unstamped: tuple = ()) -> dict:
    """{"stamp": hex, "kind", "settings" (canonical), "inputs": {stage: stamp}, "files": {path: sha256}}."""
    files: dict[str, str] = {}
    settings = {k: v for k, v in stage.settings.items() if k not in unstamped}
    canonical = _canonical(settings, stamps, hasher, files)
    inputs = {name: stamps[name] for name in stage.needs()}
    body = {"kind": stage.kind, "settings": canonical}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return {"stamp": digest, "stage": stage.name, "kind": stage.kind, "inputs": inputs, "files": files,
            "settings": canonical}


def all_stamps(spec: PipelineSpec, hasher: Optional[FileHasher] = None) -> dict[str, dict]:
    """Every stage's stamp record, in order."""
    from megafin.pipeline.registry import get_kind

    hasher = hasher or FileHasher(spec.out / HASH_CACHE)
    stamps: dict[str, str] = {}
    records: dict[str, dict] = {}
    for name, stage in spec.stages.items():
        record = stage_stamp(stage, stamps, hasher, get_kind(stage.kind).unstamped)
        stamps[name] = record["stamp"]
        records[name] = record
    hasher.save()
    return records


@dataclass
class StageState:
    """What a stage's directory says about earlier attempts."""
    directory: Path

    @property
    def state_dir(self) -> Path:
        return self.directory / STATE

    def _read(self, name: str) -> Optional[str]:
        try:
            return json.loads((self.state_dir / name).read_text()).get("stamp")
        except (OSError, ValueError, AttributeError):
            return None

    def done(self) -> Optional[str]:
        return self._read("done.json")

    def started(self) -> Optional[str]:
        return self._read("started.json")

    def decide(self, stamp: str, resumes_in_place: bool) -> str:
        """skip | resume | fresh (also: the directory holds another stamp's outputs, to be removed)."""
        if self.done() == stamp:
            return "skip"
        if self.started() == stamp and self.done() is None and resumes_in_place:
            return "resume"
        return "fresh"

    def clear(self) -> None:
        """Empty the stage directory (outputs of other inputs, or an interrupted attempt that cannot resume)."""
        if self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def mark_started(self, record: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "done.json").unlink(missing_ok=True)
        write_text_atomic(self.state_dir / "started.json", json.dumps(record, indent=2, default=str) + "\n")

    def mark_done(self, record: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.state_dir / "done.json", json.dumps(record, indent=2, default=str) + "\n")
