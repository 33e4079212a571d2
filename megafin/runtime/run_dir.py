"""A run directory has one owner: one live run at a time (an exclusive lock), and a fresh run never replaces an
earlier run's checkpoints unless asked to (checkpoint.overwrite=true).

The lock is an advisory POSIX record lock (fcntl.lockf) on RUN_DIR/.megafin.lock, taken by rank 0 and held for the
life of the run. The kernel drops it when the holder dies, however it dies, so a crashed, killed or requeued job
never leaves a stale lock behind (the file's text stays, but only the lock counts). POSIX locks rather than flock():
a forked child does not inherit them (nothing but the trainer can keep a run_dir locked), and NFS clients honour them
across nodes. Their one trap, that closing any descriptor of the file drops the process's lock, is why this process
opens the file once and refuses to lock it twice.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

LOCK_NAME = ".megafin.lock"
_STEP_DIR = re.compile(r"^step_\d+$")
_HELD: dict[Path, "RunDirLock"] = {}  # locks this process holds, by resolved path
# lockf's answers on filesystems that have no locks (NFS without a lock manager, some parallel filesystems).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class RunDirBusy(RuntimeError):
    """Another live process holds the run_dir. str(err) is the one line to print."""


class RunDirLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        """Take the lock without waiting, or raise RunDirBusy naming the holder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:
            raise RunDirBusy(self._busy_message(f"this process (pid {os.getpid()})"))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)  # this process held no lock on the file, so closing drops nothing
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunDirBusy(self._busy_message(_read_holder(self.path))) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                  "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        _HELD[key] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(self.path.resolve(), None)
        os.close(self._fd)  # drops the lock; the file's text stays (a later holder rewrites it)
        self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _busy_message(self, holder: str) -> str:
        return (f"run_dir {self.run_dir} is in use by {holder} (lock file {self.path}): wait for that run to end, "
                f"stop it, or use another run_dir")


def _read_holder(path: Path) -> str:
    """Who holds the lock, from the text the holder wrote after taking it."""
    unknown = "another process (it has not written its pid and host yet)"
    try:
        info = json.loads(path.read_text())
        pid, host, since = int(info["pid"]), str(info["host"]), str(info.get("started", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return unknown
    if host == socket.gethostname() and not _alive(pid):  # an earlier holder's text: the new one is just starting
        return unknown
    return f"pid {pid} on host {host} since {since}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run_dir(run_dir: str | Path, is_rank0: bool) -> Optional[RunDirLock]:
    """Collective: rank 0 takes the lock and every rank learns whether it did, so that on failure every rank
    raises RunDirBusy and exits by itself (no rank is left waiting in a collective for a rank 0 that left).
    Returns the held lock on rank 0, None elsewhere."""
    import torch
    import torch.distributed as dist

    lock: Optional[RunDirLock] = None
    message = ""
    if is_rank0:
        try:
            lock = RunDirLock(run_dir).acquire()
        except RunDirBusy as err:
            message = str(err)
        except OSError as err:
            if err.errno in _NO_LOCKS:  # a filesystem without locks must not make the run impossible
                print(f"megafin: warning: {run_dir}: this filesystem cannot lock {LOCK_NAME} ({err.strerror}); "
                      f"a second run on this run_dir would not be stopped", file=sys.stderr, flush=True)
            else:
                message = f"run_dir {run_dir}: cannot take the lock {Path(run_dir) / LOCK_NAME}: {err.strerror}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        from megafin.runtime.distributed import collective_device

        failed = torch.tensor([1 if message else 0], dtype=torch.int32, device=collective_device())
        dist.broadcast(failed, src=0)
        if failed.item() and not message:
            message = f"run_dir {run_dir} is in use by another run (rank 0 reported the holder)"
    if message:
        raise RunDirBusy(message)
    return lock


# ------------------------------------------------------------------ checkpoints of an earlier run
def earlier_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (step_N/ with megafin.json) and the `latest` marker under RUN_DIR/checkpoints."""
    root = Path(run_dir) / "checkpoints"
    try:
        return sorted(p for p in root.iterdir()
                      if p.name == "latest" or (_STEP_DIR.match(p.name) and (p / "megafin.json").is_file()))
    except OSError:  # no such directory (a fresh run_dir), or not one: validation reports run_dir itself
        return []


def checkpoint_overwrite_problem(cfg: Any) -> Optional[str]:
    """For validation (filesystem only, before any process group): a fresh run (train.resume=none) in a run_dir that
    holds an earlier run's checkpoints would replace them. The one-line problem, or None when there is none."""
    if cfg.train.resume != "none" or cfg.checkpoint.overwrite:
        return None
    found = earlier_checkpoints(cfg.run_dir)
    if not found:
        return None
    steps = [p.name for p in found if p.name != "latest"]
    shown = ", ".join(steps[-2:]) if steps else "a latest marker"
    return (f"train.resume: none would overwrite the checkpoints in {Path(cfg.run_dir) / 'checkpoints'} ({shown}); "
            f"use train.resume=auto to continue that run, another run_dir, or checkpoint.overwrite=true to replace "
            f"them")


def discard_earlier_checkpoints(cfg: Any) -> int:
    """Rank 0, once the run holds the lock and has read whatever it starts from (train.init_from, dpo.reference):
    a fresh run with checkpoint.overwrite=true removes the earlier run's checkpoints, so they never mix with its own
    (pruning by step number would otherwise keep the earlier run's higher steps). Returns how many it removed."""
    if cfg.train.resume != "none" or not cfg.checkpoint.overwrite:
        return 0
    found = earlier_checkpoints(cfg.run_dir)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return sum(1 for p in found if p.name != "latest")
