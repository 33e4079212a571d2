"""SIGTERM and SIGUSR1 (Slurm's pre-timeout signal) ask the run to save at the end of the step and exit."""
from __future__ import annotations

import signal
from types import FrameType
from typing import Optional

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records the first handled signal; the loop polls `requested` once per step."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(f"megafin: received {self.signal_name}; saving a checkpoint at the end of this step", flush=True)

    def install(self) -> "StopRequest":
        """Idempotent: the CLI installs it before the heavy imports (a signal during start-up then stops the run
        cleanly at its first step instead of killing it), and the training loop uses the same request."""
        if not self._previous:
            for sig in HANDLED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class StopInPreparation(Exception):
    """A stop signal honoured before the first step (e.g. between chunks of the DPO reference pass): there is no
    training state to checkpoint, the preparation's work so far is kept, and the run exits 75 like any signal stop."""


# The process's one stop request: installed by `megafin train` as early as possible, polled by the loop.
STOP_REQUEST = StopRequest()
