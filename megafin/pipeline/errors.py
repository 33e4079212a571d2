"""PipelineError: one line naming the PIPELINE.yaml line and key at fault (or the stage that failed), exit 2."""
from __future__ import annotations


class PipelineError(Exception):
    """Bad pipeline YAML or a stage that cannot run; the message is the whole line shown to the user."""
