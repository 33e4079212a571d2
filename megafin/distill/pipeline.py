"""`megafin distill` end to end: prompts -> samples -> judgments -> pairs, each step resumable.

OUT (or OUT/shard-i-of-N with --shard) holds:
  run.json        the settings that make the outputs (a rerun with different ones is refused: it would mix them)
  prompts.jsonl   the converted prompts of this shard (rewritten whole each run)
  samples.jsonl   append-only, one row per solution                      (sampling.py)
  judgments.jsonl append-only, one row per judgment                      (judging.py)
  pairs.jsonl     rebuilt whole from the two above at the end of each run (pairs.py)
  stats.json      counts over everything on disk, plus this run's judge requests (stats.py)

The policy engine and the judge client are opened only when a step has work for them, through factories the CLI
(or a test) passes in."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from megafin.distill.errors import DistillError
from megafin.distill.judging import latest_judgments, run_judging
from megafin.distill.overlap import find_overlap, refusal
from megafin.distill.pairs import PAIR_KINDS, build_pairs
from megafin.distill.prompts import PromptRow, read_prompts
from megafin.distill.records import write_atomically
from megafin.distill.sampling import (DEFAULT_TEMPLATE, PromptTemplate, SamplingSettings, existing_samples,
                                      run_sampling, SamplingSummary)
from megafin.distill.stats import collect_stats


@dataclass
class DistillSettings:
    prompts: Path
    out: Path
    policy: str                       # what the samples are recorded as coming from (--model)
    judge_model: str
    judge_template: str = "outcome_process"
    source: str = "auto"
    fields: dict = field(default_factory=dict)
    limit: Optional[int] = None
    eval_data_dir: Optional[Path] = None
    allow_overlap: bool = False
    drop_overlap: bool = False        # leave the overlapping prompts out (counted) instead of refusing the file
    eval_tasks: str = "all"           # the evaluation tasks checked for overlap (those whose files are there)
    overlap_n: int = 10               # word n-grams of the overlap check (FinDAP: 10)
    prompt_template: Path = DEFAULT_TEMPLATE
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    outcome_judge: str = "llm"        # llm | rules
    rule_rel_tol: float = 1e-2
    pair_kinds: tuple[str, ...] = PAIR_KINDS
    max_pairs_per_prompt: int = 4
    shard: tuple[int, int] = (0, 1)
    progress: bool = True

    def run_dir(self) -> Path:
        i, n = self.shard
        return self.out if n == 1 else self.out / f"shard-{i}-of-{n}"

    def identity(self) -> dict:
        """What the outputs depend on: a rerun must agree on all of it."""
        s = self.sampling
        return {"prompts": str(self.prompts), "source": self.source, "fields": self.fields, "limit": self.limit,
                "drop_overlap": self.drop_overlap, "eval_tasks": self.eval_tasks, "overlap_n": self.overlap_n,
                "shard": list(self.shard), "policy": self.policy, "prompt_template": str(self.prompt_template),
                "n": s.n, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                "max_new_tokens": s.max_new_tokens, "seed": s.seed, "stop": list(s.stop),
                "judge_model": self.judge_model, "judge_template": self.judge_template}


def check_run_identity(settings: DistillSettings) -> None:
    path = settings.run_dir() / "run.json"
    mine = settings.identity()
    if path.exists():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DistillError(f"{path}: not valid JSON; remove it or use a new --out") from None
        differ = [k for k in mine if theirs.get(k) != mine[k]]
        if differ:
            k = differ[0]
            raise DistillError(f"--out {settings.out}: written by a run with {k}={theirs.get(k)!r}, this run has "
                               f"{k}={mine[k]!r}; resuming would mix the two: use a new --out (or the same "
                               f"settings)")
        return
    write_atomically(path, json.dumps(mine, indent=2) + "\n")


def load_prompts(settings: DistillSettings) -> tuple[list[PromptRow], dict]:
    """This shard's prompts, after the evaluation-overlap check of the whole file."""
    rows = read_prompts(settings.prompts, settings.source, settings.fields)
    if settings.limit is not None:
        rows = rows[:settings.limit]
    overlap = {"checked": 0, "overlapping": 0, "allowed": settings.allow_overlap}
    if not settings.allow_overlap:
        report = find_overlap([(r.line, r.question) for r in rows], settings.eval_data_dir, settings.eval_tasks,
                              settings.overlap_n)
        overlap.update(checked=report.checked, overlapping=len(report.hits), eval_files=report.eval_files,
                       n=settings.overlap_n, by_task=report.by_file())
        if report.hits and not settings.drop_overlap:
            raise DistillError(refusal(report, settings.prompts, settings.overlap_n))
        lines = {line for line, _, _ in report.hits}
        rows = [r for r in rows if r.line not in lines]
        overlap["dropped"] = len(lines)
    i, n = settings.shard
    return [r for k, r in enumerate(rows) if k % n == i], overlap


def run_distill(settings: DistillSettings, open_policy: Callable[[], Any],
                open_judge: Callable[[list[PromptRow]], Any]) -> dict:
    """Every step that has work left; returns stats.json's content (also written). open_judge gets this shard's
    prompts (the rules-only judge reads their checkable answers)."""
    prompts, overlap = load_prompts(settings)
    template = PromptTemplate(settings.prompt_template)
    run_dir = settings.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_identity(settings)
    write_atomically(run_dir / "prompts.jsonl",
                     "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in prompts))

    samples_path = run_dir / "samples.jsonl"
    wanted = {(r.id, k) for r in prompts for k in range(settings.sampling.n)}
    probe = SamplingSummary()
    have = existing_samples(samples_path, probe)
    if any(f"{pid}#{k}" not in have for pid, k in wanted):
        engine = open_policy()
        try:
            sampling = run_sampling(engine, prompts, template, settings.sampling, samples_path, settings.progress)
        finally:
            engine.close()
        sampling.torn_line_dropped |= probe.torn_line_dropped
    else:
        sampling = SamplingSummary(already_done=len(wanted), torn_line_dropped=probe.torn_line_dropped)
    ids = {r.id for r in prompts}
    samples = {k: s for k, s in existing_samples(samples_path, SamplingSummary()).items()
               if s.get("prompt_id") in ids and s.get("index", -1) < settings.sampling.n}

    judgments_path = run_dir / "judgments.jsonl"
    latest, _ = latest_judgments(judgments_path)
    from megafin.distill.judging import needs_judging

    judging: dict = {"to_judge": 0, "judge": {}}
    if any(needs_judging(latest.get(k)) for k in samples):
        judge = open_judge(prompts)
        try:
            judging = run_judging(judge, prompts, samples, judgments_path, settings.judge_model,
                                  settings.judge_template, settings.progress)
        finally:
            close = getattr(judge, "close", None)
            if close:
                close()
        latest, _ = latest_judgments(judgments_path)

    prompt_texts = {r.id: template.render(r) for r in prompts}
    pairs, report = build_pairs(prompts, prompt_texts, samples, latest, settings.judge_model,
                                settings.outcome_judge, settings.max_pairs_per_prompt, settings.pair_kinds,
                                settings.rule_rel_tol)
    write_atomically(run_dir / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    stats = collect_stats(settings, prompts, overlap, samples, latest, sampling, judging, report)
    write_atomically(run_dir / "stats.json", json.dumps(stats, indent=2) + "\n")
    return stats
