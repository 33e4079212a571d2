"""`megafin generate`: a JSONL of prompts through an engine into a JSONL of samples, resumable and shardable.

Input rows hold `prompt` (text) or `messages` (chat turns); every other field is kept. An output row is the input
row plus `_line` (its line number in the input: what a rerun uses to skip rows already done), `samples` (a list of
{text, finish_reason, completion_tokens}) and `prompt_tokens`. Rows are written and flushed batch by batch; a last
line cut by a kill is dropped and its row redone on the next run."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megafin.generate.api import GenerationError, GenerationRequest, SamplingParams
from megafin.generate.engines import GenerationEngine

WRITTEN_KEYS = ("_line", "samples", "prompt_tokens")


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the input
    index: int  # 0-based position among the input's rows (what --shard splits on)
    data: dict


@dataclass
class JobSummary:
    written: int = 0
    already_done: int = 0
    other_shards: int = 0
    bad: list[str] = field(default_factory=list)  # one line per skipped row (--skip-bad)
    dropped_partial: bool = False
    completion_tokens: int = 0
    seconds: float = 0.0


def check_row(data: object, where: str) -> Optional[str]:
    """Why this input row cannot be generated from (one line naming file:line and what was expected), or None."""
    if not isinstance(data, dict):
        return f"{where}: expected a JSON object with 'prompt' (text) or 'messages' (chat turns), " \
               f"got {type(data).__name__}"
    clash = [k for k in WRITTEN_KEYS if k in data]
    if clash:
        return f"{where}: key {clash[0]!r} is written by megafin generate; rename it in the input"
    try:
        GenerationRequest(prompt=data.get("prompt"), messages=data.get("messages")).check()
    except GenerationError as err:
        return f"{where}: {err}"
    return None


def read_rows(path: Path, skip_bad: bool, summary: JobSummary) -> list[Row]:
    """Every row of the input, checked before any model is loaded: a bad row raises GenerationError (or, with
    skip_bad, is recorded in summary.bad). Blank lines are not rows."""
    rows: list[Row] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as err:
        raise GenerationError(f"--input {path}: cannot read ({err.strerror})") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(text)
                problem = check_row(data, where)
            except json.JSONDecodeError as err:
                problem = f"{where}: not valid JSON ({err.msg} at column {err.colno})"
            index = len(rows) + len(summary.bad)
            if problem is None:
                rows.append(Row(line=number, index=index, data=data))
            elif skip_bad:
                summary.bad.append(problem)
            else:
                raise GenerationError(problem)
    return rows


def done_lines(path: Path, summary: JobSummary) -> set[int]:
    """The input lines an earlier run already wrote to OUT. A last line without its newline (the run was killed
    while writing it) is cut off the file; a broken line anywhere else is an error, not something to overwrite."""
    if not path.exists():
        return set()
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1
    if keep < len(raw):
        with path.open("r+b") as f:
            f.truncate(keep)
        summary.dropped_partial = True
    done: set[int] = set()
    for number, text in enumerate(raw[:keep].decode("utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text).get("_line")
        except (json.JSONDecodeError, AttributeError):
            line = None
        if not isinstance(line, int):
            raise GenerationError(f"--output {path}:{number}: not a row written by megafin generate (expected a "
                                  f"JSON object with '_line'); write to a new file or remove it")
        done.add(line)
    return done


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise GenerationError(f"--shard: expected i/N with 0 <= i < N (e.g. 0/4), got {text!r}")
    return i, n


def run_job(engine: GenerationEngine, rows: list[Row], output: Path, params: SamplingParams,
            shard: tuple[int, int] = (0, 1), batch_size: int = 16, summary: Optional[JobSummary] = None,
            progress: bool = True, input_name: str = "the input") -> JobSummary:
    """Generate for the rows of this shard not yet in OUT, appending to OUT one flushed batch at a time."""
    from tqdm import tqdm

    summary = summary or JobSummary()
    done = done_lines(output, summary)
    i, n = shard
    mine = [r for r in rows if r.index % n == i]
    summary.other_shards = len(rows) - len(mine)
    todo = [r for r in mine if r.line not in done]
    summary.already_done = len(mine) - len(todo)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with output.open("a", encoding="utf-8") as out, \
            tqdm(total=len(todo), unit="row", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for at in range(0, len(todo), batch_size):
            batch = todo[at:at + batch_size]
            requests = [GenerationRequest(prompt=r.data.get("prompt"), messages=r.data.get("messages"),
                                          params=params) for r in batch]
            try:
                results = engine.generate(requests)
            except GenerationError as err:  # name the rows: what to fix in the input
                where = f"line {batch[0].line}" if len(batch) == 1 else f"lines {batch[0].line}-{batch[-1].line}"
                raise GenerationError(f"{input_name}, {where}: {err}") from None
            lines = []
            for row, result in zip(batch, results):
                samples = [{"text": s.text, "finish_reason": s.finish_reason,
                            "completion_tokens": s.completion_tokens} for s in result.samples]
                summary.completion_tokens += sum(s.completion_tokens for s in result.samples)
                lines.append(json.dumps({**row.data, "_line": row.line, "samples": samples,
                                         "prompt_tokens": result.prompt_tokens}, ensure_ascii=False) + "\n")
            # One write per batch, flushed and synced: a kill loses at most the batch in flight.
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            summary.written += len(batch)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - start
    return summary
