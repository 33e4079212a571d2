"""PipelineError: one line naming the PIPELINE.yaml line and key at fault (or the stage that failed), exit 2."""
from __future__ import annotations


class PipelineError(Exception):
    """Bad pipeline YAML or a stage that cannot run; the message is the whole line shown to the user. `code` is the
    exit code: 2, or a failed stage command's own (75: a training stage checkpointed on a signal; 3: diverged)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
