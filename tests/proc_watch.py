"""Watching a training run from a fault test: its output line by line with deadlines, and every process it started.

torchrun starts each rank in a session of its own, so a rank is found as a descendant of the agent, not by session.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import psutil

from tests.helpers import REPO, free_port

# Another process holding a run_dir's lock (no torch import: it starts in a fraction of a second).
_HOLDER = ("import sys, time\nfrom megafin.runtime.run_dir import RunDirLock\n"
           "RunDirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(300)\n")


def hold_lock_elsewhere(run_dir: Path) -> subprocess.Popen:
    """A process that holds `run_dir`'s lock until killed (the caller kills and waits for it)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def start_ranks(overrides: Sequence[str], world: int, recipe: Path, env: Optional[dict] = None) -> list:
    """`world` independent rank processes, as srun starts them (no agent to stop the others when one fails), each in
    a session of its own with its output in a pipe (wrap each in Watched)."""
    port = free_port()
    procs = []
    for rank in range(world):
        rank_env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": str(world),
                    "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(env or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "megafin.train", str(recipe), *overrides], cwd=REPO,
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
    return procs


class Watched:
    """Reads a Popen's merged stdout on a thread, so that waiting for a line can time out."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line (from now on) containing `text`; fails with the output so far after `timeout` s or EOF."""
        deadline = time.time() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} after {timeout:.0f}s:\n{self.output()[-4000:]}") from None
            if line is None:
                raise AssertionError(f"output ended without {text!r}:\n{self.output()[-4000:]}")
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float) -> int:
        """Wait for the exit code and the rest of the output."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return code

    def output(self) -> str:
        return "".join(self.lines)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def in_session(sid: int) -> list[psutil.Process]:
    """Live processes of session `sid` (a run started with start_new_session=True has sid == its pid)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            pass
    return found


def wait_gone(find, timeout: float) -> list[psutil.Process]:
    """Poll `find()` until it returns no live process or `timeout` s pass; returns what is still alive."""
    deadline = time.time() + timeout
    while True:
        left = find()
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each process by its id (cleanup after a fault test, whatever it left)."""
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
