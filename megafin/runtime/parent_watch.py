"""A rank that torchrun started stops when torchrun's agent dies, instead of training on as an orphan.

torchrun starts every rank in a session of its own, so when the agent is killed (SIGKILL, OOM killer, a lost node
shell) nothing reaches the ranks: they keep training with nobody to collect their exit codes, holding the run_dir lock
against the next attempt. A daemon thread polls getppid() (a reparented process sees another parent) and sends this
process SIGTERM: the training loop then saves a checkpoint at the end of the step and exits 75, like a preemption.
Polling rather than prctl(PR_SET_PDEATHSIG): that signal follows the *thread* that started the child, and the agent
may start ranks from a thread that ends before it does.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional


_WATCH: Optional[threading.Thread] = None  # one per process, however many runs it makes


def stop_when_orphaned(interval_s: float = 1.0) -> Optional[threading.Thread]:
    """Start the watch when this process is a torchrun worker (TORCHELASTIC_RUN_ID set); None otherwise. A process
    that trains several times (runs in one launch) keeps its first watch."""
    global _WATCH
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    if _WATCH is not None and _WATCH.is_alive():
        return _WATCH
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        print(f"megafin: torchrun's agent (pid {parent}) has exited; stopping this rank", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="megafin-parent-watch", daemon=True)
    thread.start()
    _WATCH = thread
    return thread
