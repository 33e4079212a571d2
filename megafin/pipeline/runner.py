"""Running the stages here, in order: each is skipped (done with the same stamp), resumed (interrupted with the same
stamp) or run from an empty directory (new, or its inputs changed), then stamped done."""
from __future__ import annotations

import sys
import time
from typing import Optional

from megafin.pipeline.errors import PipelineError
from megafin.pipeline.registry import get_kind
from megafin.pipeline.spec import PipelineSpec, select
from megafin.pipeline.stage import StageRun, stage_dir
from megafin.pipeline.stamps import StageState, all_stamps


def say(text: str) -> None:
    print(f"megafin pipeline: {text}", file=sys.stderr, flush=True)


def upstream(spec: PipelineSpec, names: list[str]) -> list[str]:
    """The stages outside `names` that `names` read, directly or through each other, in run order."""
    wanted, todo = set(), list(names)
    while todo:
        for need in spec.stages[todo.pop()].needs():
            if need not in wanted:
                wanted.add(need)
                todo.append(need)
    return [n for n in spec.names() if n in wanted and n not in names]


def plan(spec: PipelineSpec, start: Optional[str] = None, until: Optional[str] = None
         ) -> tuple[list[str], dict[str, dict]]:
    """(the stages to run, every stage's stamp record). With --from, the stages it needs from before it must be
    done with their current stamps, and the selected stages' outputs are removed (they run again from scratch)."""
    names = select(spec, start, until)
    records = all_stamps(spec)
    for name in upstream(spec, names):
        if StageState(stage_dir(spec, name)).done() != records[name]["stamp"]:
            raise PipelineError(f"stage {name} (needed by {', '.join(names)}) is not done with its current inputs: "
                                f"run it first (--from {name}, or without --from)")
    if start is not None:
        for name in names:
            StageState(stage_dir(spec, name)).clear()
    return names, records


def begin_stage(spec: PipelineSpec, name: str, record: dict) -> str:
    """Decide and prepare one stage: skip | resume | fresh (a fresh stage's directory is emptied and stamped
    started)."""
    kind = get_kind(spec.stages[name].kind)
    state = StageState(stage_dir(spec, name))
    decision = state.decide(record["stamp"], kind.resumes_in_place)
    if decision == "skip":
        say(f"[{name}] done with the same inputs (stamp {record['stamp'][:12]}): skipped")
    elif decision == "fresh":
        if state.started() or state.done():
            say(f"[{name}] its inputs changed since the last attempt (or it cannot resume): starting over")
        state.clear()
        state.directory.mkdir(parents=True, exist_ok=True)
        state.mark_started(record)
    else:
        say(f"[{name}] interrupted earlier with the same inputs: resuming in {state.directory}")
    return decision


def run_stage(spec: PipelineSpec, name: str, record: dict) -> str:
    """Run one stage if needed; returns what happened: skipped | resumed | ran."""
    decision = begin_stage(spec, name, record)
    if decision == "skip":
        return "skipped"
    get_kind(spec.stages[name].kind).run(StageRun.open(spec, name, record, resumed=decision == "resume"))
    StageState(stage_dir(spec, name)).mark_done(record)
    return "resumed" if decision == "resume" else "ran"


def run_local(spec: PipelineSpec, start: Optional[str] = None, until: Optional[str] = None) -> list[tuple]:
    names, records = plan(spec, start, until)
    done = []
    for name in names:
        t0 = time.perf_counter()
        what = run_stage(spec, name, records[name])
        seconds = time.perf_counter() - t0
        done.append((name, spec.stages[name].kind, what, seconds))
        if what != "skipped":
            say(f"[{name}] {what} in {seconds:.1f} s")
    say("stages: " + ", ".join(f"{n} {w} ({s:.0f} s)" for n, _, w, s in done))
    return done


def ready(spec: PipelineSpec, name: str) -> dict:
    """The stage's stamp record, once the stages it reads are done with their current stamps (a Slurm job)."""
    if name not in spec.stages:
        raise PipelineError(f"--stage {name}: not a stage of {spec.path} (stages: {', '.join(spec.names())})")
    records = all_stamps(spec)
    for need in upstream(spec, [name]):
        if StageState(stage_dir(spec, need)).done() != records[need]["stamp"]:
            raise PipelineError(f"--stage {name}: stage {need} is not done with its current inputs")
    return records[name]


def run_one(spec: PipelineSpec, name: str) -> str:
    """One stage, as a Slurm job runs it."""
    return run_stage(spec, name, ready(spec, name))
