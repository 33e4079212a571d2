"""The report of `megafin eval run`: OUT/results.json, OUT/report.md (one table), OUT/report.png (a bar chart) and
OUT/predictions/<task>.jsonl. Every file is written to a temporary name and renamed, results.json last: a run that
dies leaves no results.json that looks complete."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from megafin.checkpoint.atomic import write_text_atomic
from megafin.eval.errors import EvalError

RESULTS = "results.json"


def fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3f}"


def interval(ci: Optional[Sequence[float]]) -> str:
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown_table(results: dict) -> str:
    lines = ["| task | metric | score | baseline | 95% interval | examples | unparsable |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for t in results["tasks"]:
        if t.get("skipped"):
            lines.append(f"| {t['title']} | {t['metric']} | skipped: {t['skipped']} | — | — | {t['examples']} | — |")
            continue
        lines.append(f"| {t['title']} | {t['metric']} | {fmt(t['score'])} | {fmt(t['baseline'])} | "
                     f"{interval(t['ci95'])} | {t['examples']} | {t['unparsable']} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    head = (f"# megafin eval: {results['model']}\n\nengine `{results['engine']}`, data `{results['source']}`"
            f"{', first ' + str(results['limit']) + ' examples per task' if results.get('limit') else ''}; "
            f"{results['decoding']}; 95% bootstrap intervals ({results['bootstrap']['resamples']} resamples).\n\n")
    return head + markdown_table(results) + "\n"


def save_png(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def bar_chart(labels: Sequence[str], series: dict[str, list[Optional[float]]],
              intervals: dict[str, list[Optional[Sequence[float]]]], baselines: list[Optional[float]],
              title: str, path: Path) -> None:
    """Grouped bars (one group per task, one bar per series) with interval whiskers and the baseline as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(labels), max(1, len(series))
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n * max(1, k) ** 0.5 + 2), 4))
    for j, (name, scores) in enumerate(series.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        heights = [s if s is not None else 0.0 for s in scores]
        errs = [[max(0.0, (s or 0) - ci[0]) if ci else 0 for s, ci in zip(scores, intervals[name])],
                [max(0.0, ci[1] - (s or 0)) if ci else 0 for s, ci in zip(scores, intervals[name])]]
        ax.bar(xs, heights, width, yerr=errs, capsize=2, label=name)
    labelled = False
    for i, b in enumerate(baselines):
        if b is not None:
            ax.hlines(b, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label=None if labelled else "baseline")
            labelled = True
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (task's headline metric)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    save_png(fig, path)
    plt.close(fig)


def write_report(results: dict, predictions: dict[str, list[dict]], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for task, rows in predictions.items():
        write_text_atomic(pred_dir / f"{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    scored = [t for t in results["tasks"] if not t.get("skipped")]
    bar_chart([t["title"] for t in scored], {Path(results["model"]).name or results["model"]:
                                             [t["score"] for t in scored]},
              {Path(results["model"]).name or results["model"]: [t["ci95"] for t in scored]},
              [t["baseline"] for t in scored], f"megafin eval ({results['engine']})", out / "report.png")
    write_text_atomic(out / "report.md", markdown(results))
    write_text_atomic(out / RESULTS, json.dumps(results, indent=2) + "\n")


def read_results(out: Path) -> dict:
    """OUT/results.json of a finished run; EvalError naming the file otherwise."""
    path = Path(out) / RESULTS if Path(out).is_dir() else Path(out)
    if not path.is_file():
        raise EvalError(f"{path}: no results (expected the OUT directory of a finished `megafin eval run`)")
    try:
        results = json.loads(path.read_text())
    except ValueError as err:
        raise EvalError(f"{path}: not JSON ({err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), list) or not all(
            isinstance(t, dict) and {"task", "metric", "score"} <= set(t) for t in results["tasks"]):
        raise EvalError(f"{path}: not a megafin eval results file (expected 'tasks': [{{task, metric, score, ...}}])")
    return results
