"""`kind: distill`: FinDAP's preference distillation (`megafin distill`): the policy samples solutions to prompts with
reference answers, a judge grades them, pairs land in OUT/<stage>/pairs.jsonl. An interrupted run resumes by itself
(its outputs are append-only and the judge's answers cached).

    distill:
      kind: distill
      policy: "@cpt_it"
      prompts: ../shared/data/tatqa/dev.jsonl
      judge: {serve: "@cpt_it"}        # `megafin serve` of a checkpoint on 127.0.0.1 for this stage, or
                                       # {base_url: http://host:8000/v1, model: NAME} (vllm serve elsewhere)
      args: {limit: 64, n: 4, max-new-tokens: 256, outcome-judge: rules}   # more `megafin distill` flags
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from megafin.pipeline.registry import (Problem, StageKind, is_mapping, is_str, optional, register_kind, require,
                                       unknown_keys)

RESERVED = ("prompts", "out", "model", "judge-base-url", "judge-model")


def flags(args: dict) -> list[str]:
    """{"n": 4, "no-progress": true} -> ["--n", "4", "--no-progress"] (false: left out)."""
    out: list[str] = []
    for key, value in args.items():
        if value is False or value is None:
            continue
        out.append(f"--{key}")
        if value is not True:
            out.append(str(value))
    return out


@contextlib.contextmanager
def served(model: str, extra: list[str], log: Any, timeout: float = 600) -> Iterator[str]:
    """`megafin serve MODEL --port 0` on 127.0.0.1 in a subprocess; yields its base URL once /health answers;
    stopped (by its own PID) afterwards."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "megafin", "serve", model, "--host", "127.0.0.1", "--port", "0",
                             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    found: list[str] = []
    tail: list[str] = []

    def drain() -> None:  # keeps reading, so that the server never blocks on a full pipe
        for line in proc.stderr:
            tail[:] = (tail + [line])[-20:]
            m = re.search(r"listening on (http://\S+/v1)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"megafin serve {model} did not start (exit {proc.poll()}): "
                                   + " | ".join(t.strip() for t in tail[-3:]))
            if found:
                try:
                    if httpx.get(found[0].removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        log(f"judge: megafin serve {model} at {found[0]}")
        yield found[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@register_kind("distill")
class Distill(StageKind):
    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("policy", "prompts", "judge", "args"))
        yield from require(s, "policy", is_str, "the policy (\"@stage\", a checkpoint or an HF directory)")
        yield from require(s, "prompts", is_str, "a JSONL of prompts with reference answers")
        judge = s.get("judge")
        if not is_mapping(judge) or not ({"serve"} <= set(judge) or {"base_url", "model"} <= set(judge)):
            yield ("judge",), "{serve: MODEL, args: [...]} or {base_url: URL, model: NAME}", judge
        else:
            yield from ((("judge", *p), e, g) for p, e, g in unknown_keys(judge, ("serve", "args", "base_url",
                                                                                  "model")))
        yield from optional(s, "args", is_mapping, "a mapping of `megafin distill` flag -> value")
        for key in (s.get("args") or {}) if is_mapping(s.get("args")) else ():
            if key in RESERVED:
                yield ("args", key), "a flag the stage does not set itself", key

    def run(self, stage: Any) -> None:
        from megafin.pipeline.errors import PipelineError

        s = stage.settings
        judge = s["judge"]
        base = ["distill", "--prompts", s["prompts"], "--out", str(stage.directory), "--model", s["policy"],
                *flags({"no-progress": True, **(s.get("args") or {})})]
        with contextlib.ExitStack() as stack:
            if "serve" in judge:
                try:
                    url = stack.enter_context(served(judge["serve"], [str(a) for a in judge.get("args") or []],
                                                     stage.log))
                except RuntimeError as err:
                    raise PipelineError(f"stage {stage.name}: {err}") from None
                model = Path(judge["serve"]).name
            else:
                url, model = judge["base_url"], judge["model"]
            args = [*base, "--judge-base-url", url, "--judge-model", model]
            stage.log("megafin " + " ".join(args))
            stage.megafin(args, "megafin distill", " (a rerun resumes)")  # the judge server stops either way
        if not (stage.directory / "pairs.jsonl").is_file():
            raise PipelineError(f"stage {stage.name}: megafin distill wrote no pairs.jsonl")
