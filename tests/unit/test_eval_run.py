"""`megafin eval run` as a user runs it: every registered task on a few real examples with a tiny model and a valid
report; the report's numbers on hand-made outputs; bad input is one line naming the file (and line), exit 2; the
FinEval hub loader on a local datasets directory; `megafin eval compare`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pytest

from megafin.cli import main as megafin_main
from megafin.eval.tasks.base import Example, Scored
from tests.eval_fixtures import eval_model  # noqa: F401  (fixture)


@dataclass(frozen=True)
class LetterTask:
    """A test task: the gold letter of each row, accuracy of the first letter answered."""
    name: str = "letters"
    title: str = "Letters"
    metric: str = "accuracy"
    data_file: str = "letters/test.jsonl"
    fineval_config: Optional[str] = None
    max_new_tokens: int = 4
    needs_judge: bool = False

    def examples(self, rows: Sequence[dict]) -> list[Example]:
        return [Example(id=str(r["id"]), messages=[{"role": "user", "content": r["q"]}], gold=r["gold"]) for r in rows]

    def score(self, examples: Sequence[Example], outputs: Sequence[str], judge: Any = None) -> list[Scored]:
        out = []
        for e, text in zip(examples, outputs):
            letter = text.strip()[:1] or None
            out.append(Scored(letter, letter is None, float(letter == e.gold)))
        return out

    def aggregate(self, examples: Sequence[Example], scored: Sequence[Scored]) -> dict[str, float]:
        return {"accuracy": sum(s.value for s in scored) / len(scored)}

    def baseline(self, examples: Sequence[Example]) -> float:
        return 0.5


@dataclass(frozen=True)
class JudgedTask(LetterTask):
    name: str = "judged"
    title: str = "Judged"
    needs_judge: bool = True


class CannedEngine:
    """An engine whose answers are given: what the runner does with them is under test, not a model."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.calls = answers, 0

    def generate(self, requests):
        from megafin.generate.api import GenerationResult, Sample

        self.calls += 1
        return [GenerationResult([Sample(self.answers[r.messages[0]["content"]], "stop", 1)], 1) for r in requests]


def _rows(n: int) -> list[dict]:
    return [{"id": i, "q": f"question {i}", "gold": "AB"[i % 2]} for i in range(n)]


def test_report_numbers_on_hand_made_outputs(tmp_path):
    from megafin.eval.report import write_report
    from megafin.eval.run import Prepared, bootstrap_ci, evaluate_prepared

    task, rows = LetterTask(), _rows(40)
    examples = task.examples(rows)
    # 30 right, 6 wrong, 4 unparsable (empty): accuracy 0.75.
    answers = {f"question {i}": ("" if i >= 36 else ("AB"[i % 2] if i < 30 else "AB"[(i + 1) % 2])) for i in range(40)}
    engine = CannedEngine(answers)
    prepared = [Prepared(task, examples), Prepared(JudgedTask(), examples[:3])]
    entries, predictions = evaluate_prepared(engine, prepared)
    assert engine.calls == 1  # one batched call per task; the judged task never reaches the engine
    letters, judged = entries
    assert (letters["score"], letters["baseline"], letters["examples"], letters["unparsable"]) == (
        pytest.approx(0.75), 0.5, 40, 4)
    lo, hi = letters["ci95"]
    assert lo < 0.75 < hi and hi - lo < 0.4
    scored = task.score(examples, [answers[f"question {i}"] for i in range(40)])
    assert bootstrap_ci(task, examples, scored, "accuracy") == [lo, hi]  # fixed seed: the same interval
    assert judged["skipped"].startswith("needs a judge") and judged["score"] is None
    results = {"model": "toy", "engine": "canned", "source": str(tmp_path), "limit": None, "decoding": "greedy",
               "bootstrap": {"resamples": 1000, "seed": 0}, "tasks": entries}
    write_report(results, predictions, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["tasks"][0]["ci95"] == [lo, hi]
    report = (tmp_path / "report.md").read_text()
    assert f"| Letters | accuracy | 0.750 | 0.500 | [{lo:.3f}, {hi:.3f}] | 40 | 4 |" in report
    assert "| Judged | accuracy | skipped: needs a judge" in report
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows_out = [json.loads(x) for x in (tmp_path / "predictions/letters.jsonl").read_text().splitlines()]
    assert [r["unparsable"] for r in rows_out].count(True) == 4 and not list(tmp_path.glob("*.tmp"))


def _run(capsys, *args) -> tuple[int, list[str]]:
    code = megafin_main(["eval", "run", *map(str, args)])
    return code, capsys.readouterr().err.splitlines()


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    from megafin.eval.tasks import registry

    monkeypatch.setitem(registry.EVAL_TASKS, "letters", LetterTask())
    out = tmp_path / "out"
    assert _run(capsys, "--model", tmp_path, "--tasks", "letters", "--data-dir", tmp_path, "--out", out) == (
        2, [f"megafin eval: error: {tmp_path / 'letters/test.jsonl'}: data file not found"])
    data = tmp_path / "letters/test.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps(_rows(1)[0]) + "\n\n" + json.dumps({"id": 2, "question": "x"}) + "\n")
    code, err = _run(capsys, "--model", tmp_path, "--tasks", "letters", "--data-dir", tmp_path, "--out", out)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"megafin eval: error: {data}:3: not a letters example")
    data.write_text("{oops\n")
    code, err = _run(capsys, "--model", tmp_path, "--tasks", "letters", "--data-dir", tmp_path, "--out", out)
    assert code == 2 and err[0].startswith(f"megafin eval: error: {data}:1: not a JSON object")
    code, err = _run(capsys, "--model", tmp_path, "--tasks", "nope", "--data-dir", tmp_path, "--out", out)
    assert code == 2 and err[0].startswith("megafin eval: error: unknown evaluation task 'nope'")
    data.write_text(json.dumps(_rows(1)[0]) + "\n")
    assert _run(capsys, "--model", "openai:no-url", "--tasks", "letters", "--data-dir", tmp_path, "--out", out) == (
        2, ["megafin eval: error: --model openai:no-url: expected openai:MODEL@BASE_URL, e.g. "
            "openai:my-model@http://127.0.0.1:8000/v1"])
    code, err = _run(capsys, "--model", tmp_path / "none", "--tasks", "letters", "--data-dir", tmp_path, "--out", out)
    assert code == 2 and len(err) == 1 and "expected a megafin checkpoint" in err[0]
    assert not (out / "results.json").exists()


def test_every_task_on_real_examples(shared_data, eval_model, tmp_path, capsys):
    """Each registered task on its first 2 real examples, with the tiny random model: a complete, valid report."""
    from megafin.eval.tasks.registry import EVAL_TASKS

    _, ckpt = eval_model
    out = tmp_path / "out"
    code, err = _run(capsys, "--model", ckpt, "--tasks", "all", "--data-dir", shared_data, "--limit", 2,
                     "--out", out, "--bootstrap", 200)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["engine"] == "megafin" and [t["task"] for t in results["tasks"]] == list(EVAL_TASKS)
    for t in results["tasks"]:
        assert t["examples"] == 2
        if EVAL_TASKS[t["task"]].needs_judge:
            assert t["skipped"] and t["score"] is None
            continue
        assert 0.0 <= t["score"] <= 1.0 and 0.0 <= t["baseline"] <= 1.0 and 0 <= t["unparsable"] <= 2
        assert t["ci95"][0] <= t["score"] <= t["ci95"][1] and t["metric"] in t["metrics"]
        assert len((out / "predictions" / f"{t['task']}.jsonl").read_text().splitlines()) == 2
    report = (out / "report.md").read_text()
    assert all(f"| {task.title} |" in report for task in EVAL_TASKS.values())


def test_fineval_hub_loader_on_a_local_datasets_directory(tmp_path):
    """Without --data-dir the tasks come from the FinEval dataset (query/answer): here a datasets directory saved
    with save_to_disk, one folder per config, as a user's offline copy of the hub dataset would be."""
    import datasets

    from megafin.eval.errors import EvalError
    from megafin.eval.run import prepare
    from megafin.eval.tasks.registry import get_eval_task

    rows = [{"query": "Sentiment of 'profit up'?", "answer": "positive"},
            {"query": "Sentiment of 'loss widens'?", "answer": "negative"},
            {"query": "Sentiment of 'flat'?", "answer": "negative"}]
    fpb = get_eval_task("fpb")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / fpb.fineval_config))
    [p] = prepare([fpb], None, limit=None, fineval_source=str(tmp_path))
    assert p.task.metric == "exact_match" and p.task.name == "fpb"
    assert [e.messages for e in p.examples][0] == [{"role": "user", "content": rows[0]["query"]}]
    scored = p.task.score(p.examples, ["Positive.", "neutral", ""])
    assert [s.value for s in scored] == [1.0, 0.0, 0.0] and [s.unparsable for s in scored] == [False, False, True]
    assert p.task.baseline(p.examples) == pytest.approx(2 / 3)
    datasets.Dataset.from_list([{"question": "q"}]).save_to_disk(str(tmp_path / "bad" / fpb.fineval_config))
    with pytest.raises(EvalError, match="lacks the field"):
        prepare([fpb], None, fineval_source=str(tmp_path / "bad"))


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    def results(score: float) -> dict:
        return {"model": "m", "engine": "e", "source": "s", "limit": None, "decoding": "greedy",
                "bootstrap": {"resamples": 10, "seed": 0},
                "tasks": [{"task": "fpb", "title": "FPB", "metric": "accuracy", "score": score, "baseline": 0.6,
                           "examples": 10, "unparsable": 0, "ci95": [score - 0.1, score + 0.1]}]}

    for name, score in (("it", 0.5), ("cpt_it", 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results(score)))
    assert megafin_main(["eval", "compare", str(tmp_path / "it"), str(tmp_path / "cpt_it"),
                         "--labels", "IT,CPT+IT", "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| task | metric | baseline | IT | CPT+IT |" in table
    assert "| FPB | accuracy | 0.600 | 0.500 [0.400, 0.600] | 0.700 [0.600, 0.800] |" in table
    assert (tmp_path / "cmp/compare.png").is_file() and (tmp_path / "cmp/compare.md").is_file()
    assert megafin_main(["eval", "compare", str(tmp_path / "it"), str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (f"megafin eval: error: {tmp_path / 'nothing'}: no results "
                                               f"(expected the OUT directory of a finished `megafin eval run`)")
