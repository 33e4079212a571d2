"""Training prompts must not be evaluation questions: the check `megafin distill` runs before anything else.

"Overlap" means what `megafin eval contamination` reports (megafin/eval/contamination.py, FinDAP's check): a
question shares a word n-gram (10 by default, prompt-template n-grams left out) with an example of an evaluation
task, read from --eval-data-dir in the layout of ../shared/data/SOURCES.md. Only the tasks whose files are there
are checked (--eval-tasks narrows them), and which ones were is recorded in stats.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from megafin.distill.errors import DistillError


def default_eval_data_dir() -> Path:
    """../shared/data beside the checkout (the layout the tests and benchmarks read)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class OverlapReport:
    checked: int = 0                                          # prompts checked
    eval_files: list[str] = field(default_factory=list)       # the evaluation files read
    hits: list[tuple[int, str, str]] = field(default_factory=list)  # (input line, question, eval task) per overlap

    def by_file(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, name in self.hits:
            counts[name] = counts.get(name, 0) + 1
        return counts


def present_tasks(eval_dir: Path, tasks: str) -> list:
    """The evaluation tasks (of `tasks`: all or a comma list) whose data file is in eval_dir."""
    from megafin.eval.errors import EvalError
    from megafin.eval.run import resolve_tasks

    if not eval_dir.is_dir():
        raise DistillError(f"--eval-data-dir {eval_dir}: not a directory, so training prompts cannot be checked "
                           f"against the evaluation sets (expected the ../shared/data layout; or --allow-overlap)")
    try:
        chosen = resolve_tasks(tasks)
    except EvalError as err:
        raise DistillError(f"--eval-tasks: {err}") from None
    present = [t for t in chosen if (eval_dir / t.data_file).is_file()]
    if not present:
        raise DistillError(f"--eval-data-dir {eval_dir}: none of the evaluation files is there (expected e.g. "
                           f"{chosen[0].data_file}; or --allow-overlap)")
    return present


def find_overlap(questions: Sequence[tuple[int, str]], eval_dir: Optional[Path] = None, tasks: str = "all",
                 n: int = 10) -> OverlapReport:
    """Which (input line, question) pairs share an n-gram with an evaluation example (eval_dir: default
    default_eval_data_dir()); each hit names the first task it overlaps."""
    from megafin.eval.contamination import overlapping
    from megafin.eval.errors import EvalError

    eval_dir = Path(eval_dir or default_eval_data_dir())
    present = present_tasks(eval_dir, tasks)
    try:
        found = overlapping([q for _, q in questions], eval_dir, n=n, tasks=",".join(t.name for t in present))
    except EvalError as err:
        raise DistillError(f"--eval-data-dir: {err}") from None
    report = OverlapReport(checked=len(questions), eval_files=[t.data_file for t in present])
    for (line, question), keys in zip(questions, found):
        if keys:
            report.hits.append((line, question, keys[0].split(":", 1)[0]))
    return report


def refusal(report: OverlapReport, prompts_path: Path, n: int = 10) -> str:
    """The one line that refuses a prompt file with overlaps."""
    line, question, name = report.hits[0]
    tasks = ", ".join(f"{k}: {v}" for k, v in sorted(report.by_file().items()))
    shown = question if len(question) <= 80 else question[:77] + "..."
    return (f"--prompts {prompts_path}: {len(report.hits)} of {report.checked} questions share a {n}-gram with "
            f"evaluation examples ({tasks}), e.g. line {line}: {shown!r}; test splits are never trained on: remove "
            f"them, leave them out with --drop-overlap, narrow the check with --eval-tasks, or keep them with "
            f"--allow-overlap")
