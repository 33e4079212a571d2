"""Per-step metrics to stdout, RUN_DIR/metrics.jsonl, wandb (offline without an API key) and tensorboard."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from megafin.config.load import config_to_dict
from megafin.config.schema import Config


class MetricsLogger:
    """Only the logging rank writes. Every sink sees the same dict; jsonl is the record tests and users read."""

    def __init__(self, cfg: Config, enabled: bool, printed: Sequence[tuple[str, str]], resumed_step: int = 0) -> None:
        """`printed`: the stage's (key, format) pairs for the stdout line (TrainingStage.printed), shown before the
        loop's own (grad_norm, lr, throughput)."""
        self.enabled = enabled
        self.printed = tuple(printed) + LOOP_PRINTED
        self.interval = cfg.logging.interval
        self._wandb = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._truncate_after(resumed_step)
        self._file = self.path.open("a")
        if cfg.logging.wandb:
            self._wandb = _start_wandb(cfg, run_dir)
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint, so metrics.jsonl holds each step once."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill mid-write
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(metrics["step"])
        # JSON has no NaN: a non-finite loss is written as null next to "skipped": true.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if step % self.interval == 0 or step == 1 or metrics.get("skipped"):
            print(_format(metrics, self.printed), flush=True)
        numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def _start_wandb(cfg: Config, run_dir: Path) -> Any:
    import wandb

    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"  # no key: log locally, `wandb sync` later
    # The id follows the run directory, so a resumed or requeued job continues the same wandb run.
    run_id = "".join(ch if ch.isalnum() else "-" for ch in str(run_dir.resolve()))[-64:].strip("-")
    return wandb.init(project=cfg.logging.wandb_project, dir=str(run_dir), id=run_id, resume="allow",
                      config=config_to_dict(cfg), settings=wandb.Settings(silent=True, console="off"))


# What the training loop itself adds to every step's record, as printed.
LOOP_PRINTED = (("grad_norm", "{:.3f}"), ("lr", "{:.3e}"), ("tokens_per_s", "{:.0f}"), ("step_time_s", "{:.3f}"),
                ("mfu", "{:.1%}"), ("mem_max_alloc_gib", "{:.2f}"))


def _format(m: dict[str, Any], printed: Sequence[tuple[str, str]]) -> str:
    parts = [f"step {m['step']}"]
    for key, fmt in printed:
        if m.get(key) is not None:
            parts.append(f"{key} " + fmt.format(m[key]))
    if m.get("skipped"):
        parts.append("SKIPPED (non-finite loss)")
    return " | ".join(parts)
