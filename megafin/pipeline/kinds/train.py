"""`kind: train`: one `megafin train` run (any stage: cpt, sft, cpt_it, dpo) in OUT/<stage>/run, started from a
recipe; it resumes from its own checkpoints (train.resume=auto) when interrupted. "@stage" is its last checkpoint.

    cpt_it:
      kind: train
      recipe: recipes/tiny/cpt_it.yaml
      data: "@data/cpt_it"            # a packed/indexed prefix, or a list of {path, weight}
      tokenizer: "@data/tokenizer"
      init_from: "@instruct"          # optional: weights to start from (a checkpoint)
      overrides: {train.steps: 150, optimizer.lr: 1.0e-3}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from megafin.pipeline.registry import (Problem, StageKind, is_mapping, is_str, optional, register_kind, require,
                                       unknown_keys)

RUN = "run"
SET_BY_PIPELINE = ("run_dir", "train.resume", "train.init_from", "data.blend", "data.tokenizer")


def _blend(data: Any) -> str:
    items = [{"path": data, "weight": 1.0}] if isinstance(data, str) else data
    return "data.blend=" + json.dumps([{"path": str(i["path"]), "weight": float(i.get("weight", 1.0))}
                                       for i in items])


def _is_blend(v: Any) -> bool:
    return is_str(v) or (isinstance(v, list) and bool(v) and all(is_mapping(i) and is_str(i.get("path")) for i in v))


@register_kind("train")
class Train(StageKind):
    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("recipe", "data", "tokenizer", "init_from", "overrides"))
        yield from require(s, "recipe", is_str, "a training recipe (YAML)")
        if is_str(s.get("recipe")) and not s["recipe"].startswith("@") and not Path(s["recipe"]).is_file():
            yield ("recipe",), "an existing recipe file", s["recipe"]
        yield from optional(s, "data", _is_blend, "a dataset prefix or a list of {path, weight}")
        yield from optional(s, "tokenizer", is_str, "a tokenizer directory")
        yield from optional(s, "init_from", is_str, "a checkpoint (\"@stage\" or a directory)")
        yield from optional(s, "overrides", is_mapping, "a mapping of recipe key -> value")
        overrides = s.get("overrides") if is_mapping(s.get("overrides")) else {}
        for key in overrides:
            if key in SET_BY_PIPELINE:
                yield ("overrides", key), "a key the pipeline does not set itself (use the stage's own setting)", key

    def deep_check(self, s: dict) -> Iterator[Problem]:
        overrides = s.get("overrides") if is_mapping(s.get("overrides")) else {}
        if is_str(s.get("recipe")) and Path(s["recipe"]).is_file():
            yield from self._check_recipe(s["recipe"], overrides)

    @staticmethod
    def _check_recipe(recipe: str, overrides: dict) -> Iterator[Problem]:
        """The stage's overrides through the trainer's own checks (the recipe at its smallest world, tp x pp x cp),
        before anything runs. Only what the overrides set is reported: the recipe's own keys may name a cluster's
        paths or GPUs (recipes are validated by their own tests), and data, init_from and run_dir come from earlier
        stages' outputs, checked when the stage starts."""
        from megafin.config import ConfigError, load_config, validate

        keys = [k for k in overrides if k != "<<"]
        try:
            cfg = load_config(recipe, [f"{k}={json.dumps(overrides[k])}" for k in keys])
            validate(cfg, cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.cp)
        except ConfigError as err:
            for line in err.lines:
                key = line.split(":", 1)[0].strip()
                hit = next((k for k in keys if key == k or line.startswith(f"{k}:") or f"{k}=" in line), None)
                if hit is not None:
                    yield ("overrides", hit), f"settings the trainer accepts ({line})", ...

    def output(self, stage_dir: Path) -> Path:
        """The run's last checkpoint (RUN/checkpoints/latest); the directory itself before it has one."""
        from megafin.checkpoint.manager import latest_checkpoint

        run = stage_dir / RUN
        try:
            found = latest_checkpoint(run) if run.is_dir() else None
        except Exception:  # a broken marker: the stage is not done, and the trainer says why when it resumes
            found = None
        return found or run / "checkpoints" / "latest"

    @staticmethod
    def overrides(stage: Any) -> list[str]:
        s = stage.settings
        out = [f"run_dir={stage.directory / RUN}", "train.resume=auto"]
        if s.get("data") is not None:
            out.append(_blend(s["data"]))
        if s.get("tokenizer"):
            out.append(f"data.tokenizer={s['tokenizer']}")
        if s.get("init_from"):
            out.append(f"train.init_from={s['init_from']}")
        out += [f"{k}={json.dumps(v)}" for k, v in (s.get("overrides") or {}).items()]
        return out

    def run(self, stage: Any) -> None:
        from megafin.pipeline.errors import PipelineError

        args = ["train", stage.settings["recipe"], *self.overrides(stage)]
        stage.log("megafin " + " ".join(args))
        stage.megafin(args, "megafin train", f" (its log is above; a rerun resumes from {stage.directory / RUN}"
                                             f"/checkpoints)", keep_code=True)
        if not (stage.directory / RUN / "checkpoints" / "latest").is_file():
            raise PipelineError(f"stage {stage.name}: megafin train wrote no checkpoint (checkpoint.save_at_end "
                                f"must stay true in a pipeline)")

    def unfinished(self, stage: Any) -> Optional[str]:
        """Why the run is not finished (its last checkpoint is before train.steps), or None: a launcher that
        requeued its job after a signal-checkpoint also exits 0."""
        from megafin.config import load_config

        steps = load_config(stage.settings["recipe"], self.overrides(stage)).train.steps
        last = self.output(stage.directory)
        step = int(last.name.split("_")[-1]) if last.name.startswith("step_") else 0
        return None if step >= steps else f"its last checkpoint is at step {step} of {steps}"

    def slurm_job(self, stage: Any) -> Optional[dict]:
        """The recipe's own sbatch script (slurm/<recipe stage>.sbatch) inside the job: ranks, USR1, requeue."""
        import yaml

        recipe_stage = (yaml.safe_load(Path(stage.settings["recipe"]).read_text()) or {}).get("stage", "cpt")
        return {"sbatch": f"slurm/{recipe_stage}.sbatch", "recipe": stage.settings["recipe"],
                "overrides": self.overrides(stage)}
