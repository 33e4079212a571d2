"""`megafin eval compare OUT1 OUT2 ...`: several models' results side by side (e.g. IT-only vs CPT+IT vs
CPT+IT+RPO): one markdown table (a column per model: score and interval) and one grouped bar chart."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from megafin.checkpoint.atomic import write_text_atomic
from megafin.eval.errors import EvalError
from megafin.eval.report import bar_chart, fmt, interval, read_results


def compare(outs: Sequence[Path], labels: Optional[Sequence[str]] = None) -> tuple[str, dict]:
    """(markdown table, {"labels", "tasks": [{task, title, metric, baseline, scores: {label: entry}}]})."""
    if not outs:
        raise EvalError("compare: expected one or more OUT directories of `megafin eval run`")
    if labels is not None and len(labels) != len(outs):
        raise EvalError(f"--labels: expected {len(outs)} labels (one per OUT), got {len(labels)}")
    labels = list(labels) if labels else [Path(o).resolve().name for o in outs]
    if len(set(labels)) != len(labels):
        raise EvalError(f"labels must differ (got {', '.join(labels)}); pass --labels")
    runs = [read_results(Path(o)) for o in outs]
    rows: dict[str, dict] = {}
    for label, results in zip(labels, runs):
        for t in results["tasks"]:
            row = rows.setdefault(t["task"], {"task": t["task"], "title": t.get("title", t["task"]),
                                              "metric": t["metric"], "baseline": t.get("baseline"), "scores": {}})
            if row["metric"] != t["metric"]:
                raise EvalError(f"task {t['task']}: scored by {row['metric']} in one run and {t['metric']} in "
                                f"{label}; compare runs of the same suite")
            row["scores"][label] = t
            if row["baseline"] is None:
                row["baseline"] = t.get("baseline")
    lines = ["| task | metric | baseline | " + " | ".join(labels) + " |",
             "| --- | --- | ---: | " + " | ".join("---" for _ in labels) + " |"]
    for row in rows.values():
        cells = []
        for label in labels:
            t = row["scores"].get(label)
            if t is None:
                cells.append("—")
            elif t.get("skipped"):
                cells.append("skipped")
            else:
                cells.append(f"{fmt(t['score'])} {interval(t.get('ci95'))}")
        lines.append(f"| {row['title']} | {row['metric']} | {fmt(row['baseline'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines), {"labels": labels, "tasks": list(rows.values())}


def write_compare(outs: Sequence[Path], out: Path, labels: Optional[Sequence[str]] = None) -> str:
    """The table printed and written to OUT/compare.md, the chart to OUT/compare.png."""
    table, data = compare(outs, labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [r for r in data["tasks"] if any(not t.get("skipped") for t in r["scores"].values())]
    series = {lab: [(r["scores"].get(lab) or {}).get("score") for r in tasks] for lab in data["labels"]}
    ints = {lab: [(r["scores"].get(lab) or {}).get("ci95") for r in tasks] for lab in data["labels"]}
    bar_chart([r["title"] for r in tasks], series, ints, [r["baseline"] for r in tasks], "megafin eval compare",
              out / "compare.png")
    write_text_atomic(out / "compare.md", "# megafin eval compare\n\n" + table + "\n")
    return table
