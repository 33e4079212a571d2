"""`megafin pipeline PIPELINE.yaml --slurm`: one sbatch job per stage (slurm/pipeline.sbatch), each
`--dependency=afterok` on the job before it, submitted from the working directory (paths in the YAML are relative
to it). Stamps are known before anything runs, so a stage already done with its current inputs is not submitted.

Each job asks `megafin pipeline --job STAGE` how to run its stage: `skip`, `inline` (the stage runs in
`megafin pipeline --stage STAGE`, one task) or `launch SCRIPT ARGS...` (a training stage: the recipe's own
slurm/<stage>.sbatch runs inside the job, with its ranks, USR1 checkpoint and requeue); after a launched stage
exits 0, `--job-done STAGE` stamps it done once its run reached train.steps (a requeued attempt also exits 0).
A requeued job starts over at `--job`, which resumes the stage (its started stamp still matches)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from megafin.pipeline.errors import PipelineError
from megafin.pipeline.registry import get_kind
from megafin.pipeline.runner import begin_stage, plan, ready, say
from megafin.pipeline.spec import PipelineSpec
from megafin.pipeline.stage import StageRun, stage_dir
from megafin.pipeline.stamps import StageState

SCRIPT = Path(__file__).resolve().parents[2] / "slurm" / "pipeline.sbatch"


def submit_pipeline(spec: PipelineSpec, start: Optional[str], until: Optional[str],
                    sbatch_args: Sequence[str] = ()) -> list[tuple[str, str]]:
    """[(stage, job id or "done")] in order."""
    names, records = plan(spec, start, until)
    spec.out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str]] = []
    previous: Optional[str] = None
    for name in names:
        kind = get_kind(spec.stages[name].kind)
        if StageState(stage_dir(spec, name)).decide(records[name]["stamp"], kind.resumes_in_place) == "skip":
            say(f"[{name}] done with the same inputs: not submitted")
            jobs.append((name, "done"))
            continue
        logs = stage_dir(spec, name).parent / "slurm"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = ["sbatch", "--parsable", f"--job-name=megafin-{name}", f"--output={logs}/{name}-%j.out",
               *(f"--dependency=afterok:{previous}",) * (previous is not None), *sbatch_args,
               str(SCRIPT), str(spec.path), name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PipelineError(f"sbatch for stage {name} failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}")
        previous = proc.stdout.strip().split(";")[0]
        say(f"[{name}] submitted job {previous}" + (f" (after {jobs[-1][1]})" if jobs and jobs[-1][1] != "done"
                                                     else ""))
        jobs.append((name, previous))
    return jobs


def job_plan(spec: PipelineSpec, name: str) -> str:
    """The one line slurm/pipeline.sbatch runs by: skip | inline | launch SCRIPT ARGS (shell-quoted)."""
    record = ready(spec, name)
    kind = get_kind(spec.stages[name].kind)
    probe = StageRun.open(spec, name, record)
    job = kind.slurm_job(probe)
    if job is None:
        return "inline"
    decision = begin_stage(spec, name, record)
    if decision == "skip":
        return "skip"
    home = Path(os.environ.get("MEGAFIN_HOME", SCRIPT.parents[1]))
    return shlex.join(["launch", str(home / job["sbatch"]), job["recipe"], *job["overrides"]])


def job_done(spec: PipelineSpec, name: str) -> None:
    """Stamp a launched stage done once its work is complete."""
    record = ready(spec, name)
    kind = get_kind(spec.stages[name].kind)
    stage = StageRun.open(spec, name, record)
    why = kind.unfinished(stage) if hasattr(kind, "unfinished") else None
    if why:
        raise PipelineError(f"stage {name} is not finished: {why} (the job was requeued, or resubmit to resume)")
    StageState(stage.directory).mark_done(record)
    say(f"[{name}] done")
