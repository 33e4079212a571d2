"""Step 2 of `megafin distill`: every sample judged against its prompt's reference answer by the judge client
(megafin/distill/judge), each judgment appended to judgments.jsonl the moment it finishes, so that a killed run
loses only the requests in flight.

A rerun skips every sample with a judgment on disk, except those discarded for a transient reason (timeout,
server_error): those are asked again (the judge's cache holds no transient results either). The last judgment of
a sample on disk is the one that counts."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from megafin.distill.judge.api import JudgeItem, Judgment
from megafin.distill.prompts import PromptRow
from megafin.distill.records import Appender, read_records

TRANSIENT = ("timeout", "server_error")


def latest_judgments(path: Path) -> tuple[dict[str, dict], bool]:
    """(sample id -> its last judgment record, whether a torn last line was dropped)."""
    records, torn = read_records(path, "judgments")
    latest: dict[str, dict] = {}
    for record in records:
        if isinstance(record.get("key"), str):
            latest[record["key"]] = record
    return latest, torn


def needs_judging(record: dict | None) -> bool:
    return record is None or (not record.get("kept") and record.get("discard_reason") in TRANSIENT)


def run_judging(judge: Any, prompts: list[PromptRow], samples: dict[str, dict], path: Path, judge_model: str,
                template: str, progress: bool = True) -> dict:
    """Judge the samples (of `prompts`) that need it; returns this run's counts and the judge's own stats."""
    from tqdm import tqdm

    latest, torn = latest_judgments(path)
    by_id = {row.id: row for row in prompts}
    order = {row.id: i for i, row in enumerate(prompts)}
    mine = sorted((s for s in samples.values() if s["prompt_id"] in by_id),
                  key=lambda s: (order[s["prompt_id"]], s["index"]))
    items = [JudgeItem(key=s["id"], question=by_id[s["prompt_id"]].problem(),
                       reference=by_id[s["prompt_id"]].reference, solution=s["text"])
             for s in mine if needs_judging(latest.get(s["id"]))]
    summary = {"to_judge": len(items), "torn_line_dropped": torn, "already_judged": len(mine) - len(items)}
    if not items:
        return {**summary, "judge": {}}
    with Appender(path) as out, tqdm(total=len(items), unit="sample", desc="judging", file=sys.stderr,
                                     disable=not progress, dynamic_ncols=True) as bar:
        def done(judgment: Judgment) -> None:
            out.write([{**asdict(judgment), "judge_model": judge_model, "template": template}])
            bar.update(1)

        judge.judge(items, on_done=done)
    return {**summary, "judge": dict(getattr(judge, "stats", {}) or {})}
