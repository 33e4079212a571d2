"""`kind: eval`: `megafin eval run` on each model, then `megafin eval compare` of them side by side
(OUT/<stage>/compare/compare.md, .png). A model whose report is complete is not evaluated again when the stage
resumes.

    eval:
      kind: eval
      models: {IT-only: "@instruct", CPT+IT: "@cpt_it", CPT+IT+RPO: "@rpo"}   # label -> checkpoint / HF dir
      data_dir: ../shared/data          # task files (or "@data/heldout": the held-out part of training splits)
      tasks: fpb,fiqa_sa,tfns,headline
      limit: null                       # first N examples of each task
      args: {batch-size: 64, bootstrap: 200}
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from megafin.pipeline.kinds.distill import flags
from megafin.pipeline.registry import (Problem, StageKind, is_mapping, is_pos_int, is_str, optional, register_kind,
                                       require, unknown_keys)

COMPARE = "compare"


def slug(label: str, k: int) -> str:
    return f"{k}_" + (re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or "model")


@register_kind("eval")
class Evaluate(StageKind):
    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("models", "data_dir", "tasks", "limit", "args"))
        models = s.get("models")
        if not is_mapping(models) or not models or not all(is_str(v) for v in models.values()):
            yield ("models",), "a mapping of label -> model (\"@stage\", a checkpoint or an HF directory)", models
        yield from require(s, "data_dir", is_str, "the task files' directory (the layout of ../shared/data)")
        yield from optional(s, "tasks", is_str, "'all' or a comma list of task names")
        yield from optional(s, "limit", lambda v: v is None or is_pos_int(v), "a positive integer or null")
        yield from optional(s, "args", is_mapping, "a mapping of `megafin eval run` flag -> value")
        if is_str(s.get("tasks")):
            from megafin.eval.tasks.registry import EVAL_TASKS

            for name in s["tasks"].split(","):
                if s["tasks"].strip() != "all" and name.strip() not in EVAL_TASKS:
                    yield ("tasks",), f"'all' or task names from {', '.join(EVAL_TASKS)}", name.strip()

    def output(self, stage_dir: Path) -> Path:
        return stage_dir / COMPARE

    def run(self, stage: Any) -> None:
        s = stage.settings
        outs, labels = [], []
        for k, (label, model) in enumerate(s["models"].items()):
            out = stage.directory / slug(label, k)
            outs.append(out)
            labels.append(label)
            if (out / "results.json").is_file():
                stage.log(f"{label}: already evaluated ({out}/results.json)")
                continue
            args = ["eval", "run", "--model", model, "--tasks", s.get("tasks", "all"), "--data-dir", s["data_dir"],
                    "--out", str(out), *flags(s.get("args") or {})]
            if s.get("limit"):
                args += ["--limit", str(s["limit"])]
            stage.log(f"{label}: megafin " + " ".join(args))
            stage.megafin(args, f"megafin eval run of {label} ({model})")
        stage.megafin(["eval", "compare", *map(str, outs), "--labels", ",".join(labels),
                       "--out", str(stage.directory / COMPARE)], "megafin eval compare")
