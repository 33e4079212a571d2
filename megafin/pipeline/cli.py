"""`megafin pipeline PIPELINE.yaml [--from STAGE] [--until STAGE] [--slurm] [--stage STAGE]`: exit 0 done (or
submitted), 2 bad pipeline YAML or a stage that failed (one line on stderr, before anything runs for bad YAML)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from megafin.runtime.exit_codes import EXIT_CONFIG_ERROR


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="PIPELINE.yaml (recipes/pipeline/tiny.yaml, recipes/pipeline/llama3_8b.yaml)")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="run STAGE and the stages after it again from scratch (their outputs are removed first); "
                        "the stages they read from before it must be done")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after STAGE")
    p.add_argument("--slurm", action="store_true", help="submit one sbatch job per stage, each after the previous "
                                                        "one succeeded (--dependency=afterok)")
    p.add_argument("--sbatch-args", default="", help="--slurm: extra sbatch flags for every job, e.g. "
                                                     "'--partition=gpu --account=fin'")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # one stage, as a Slurm job runs it
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # slurm/pipeline.sbatch: how to run a stage
    p.add_argument("--job-done", default=None, help=argparse.SUPPRESS)  # ... and stamp a launched one done
    p.add_argument("--plan", action="store_true", help="print each stage's stamp and state, run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megafin.pipeline.errors import PipelineError
    from megafin.pipeline.spec import load_spec

    try:
        spec = load_spec(args.pipeline, deep=not (args.job or args.job_done or args.stage))
        if args.plan:
            return _plan(spec)
        if args.job:
            from megafin.pipeline.slurm import job_plan

            print(job_plan(spec, args.job), flush=True)
        elif args.job_done:
            from megafin.pipeline.slurm import job_done

            job_done(spec, args.job_done)
        elif args.stage:
            from megafin.pipeline.runner import run_one

            run_one(spec, args.stage)
        elif args.slurm:
            from megafin.pipeline.slurm import submit_pipeline

            for name, job in submit_pipeline(spec, args.start, args.until, args.sbatch_args.split()):
                print(f"{name}\t{job}", flush=True)
        else:
            from megafin.pipeline.runner import run_local

            run_local(spec, args.start, args.until)
    except PipelineError as err:
        for line in str(err).splitlines():
            print(f"megafin pipeline: error: {line}", file=sys.stderr, flush=True)
        return err.code or EXIT_CONFIG_ERROR
    return 0


def _plan(spec: Any) -> int:
    from megafin.pipeline.registry import get_kind
    from megafin.pipeline.stage import stage_dir
    from megafin.pipeline.stamps import StageState, all_stamps

    for name, record in all_stamps(spec).items():
        kind = get_kind(spec.stages[name].kind)
        decision = StageState(stage_dir(spec, name)).decide(record["stamp"], kind.resumes_in_place)
        what = {"skip": "done", "resume": "interrupted: resumes", "fresh": "to run"}[decision]
        print(f"{name}\t{spec.stages[name].kind}\t{record['stamp'][:12]}\t{what}", flush=True)
    return 0
