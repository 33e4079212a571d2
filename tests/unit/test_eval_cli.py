"""`megafin eval` as a user runs it: a result on a trained checkpoint; bad input is one line naming the file (and
line), exit 2, before any model is built."""
from __future__ import annotations

import json

import pytest

from megafin.cli import main as megafin_main
from tests.helpers import FAST, TINY_RECIPE, data_overrides


def _eval(capsys, ckpt, data, task="fpb") -> tuple[int, list[str]]:
    code = megafin_main(["eval", "classification", "--ckpt", str(ckpt), "--task", task, "--data", str(data)])
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture()
def fpb_file(tmp_path):
    path = tmp_path / "fpb.jsonl"
    path.write_text(json.dumps({"text": "Profit rose.", "label": "positive"}) + "\n")
    return path


def test_missing_checkpoint(tmp_path, fpb_file, capsys):
    assert _eval(capsys, tmp_path / "nope", fpb_file) == (
        2, [f"megafin eval: error: {tmp_path / 'nope'}: checkpoint directory not found"])
    (tmp_path / "run").mkdir()
    assert _eval(capsys, tmp_path / "run", fpb_file) == (
        2, [f"megafin eval: error: {tmp_path / 'run'}: not a megafin checkpoint (megafin.json missing; "
            f"pass RUN/checkpoints/step_N)"])


def test_empty_missing_or_malformed_data(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert _eval(capsys, tmp_path, empty) == (2, [f"megafin eval: error: {empty}: no fpb examples (the file is empty)"])
    assert _eval(capsys, tmp_path, tmp_path / "none.jsonl") == (
        2, [f"megafin eval: error: {tmp_path / 'none.jsonl'}: data file not found"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "label": "neutral"}) + "\n{not json\n")
    code, err = _eval(capsys, tmp_path, bad)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"megafin eval: error: {bad}:2: not a JSON object")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"sentence": "a", "label": "neutral"}) + "\n")
    code, err = _eval(capsys, tmp_path, wrong)
    assert code == 2 and err[0].startswith(f"megafin eval: error: {wrong}:1: not a fpb example (missing or malformed "
                                           f"'text'")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    assert megafin_main(["train", str(TINY_RECIPE), *FAST, *data_overrides(tiny_data), "train.steps=1",
                         "scheduler.warmup_steps=0", "checkpoint.save_at_end=true", f"run_dir={run}"]) == 0
    return run / "checkpoints/step_0000001"


def test_code_in_a_checkpoint_does_not_run(trained, fpb_file, tmp_path, capsys):
    import pickle
    import shutil

    from tests.checkpoint_payloads import Touch

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    marker = tmp_path / "pwned"
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(Touch(marker), f)
    code, err = _eval(capsys, ckpt, fpb_file)
    assert code == 2 and not marker.exists()
    assert len(err) == 1 and err[0].startswith(f"megafin eval: error: {ckpt / '.metadata'}: refused"), err


def test_classification_result_on_a_trained_checkpoint(trained, tmp_path, capsys):
    data = tmp_path / "headline.jsonl"
    labels = {"price_up": 1, "price_constant": 0, "price_down": 0, "past_information": 1, "future_information": 0,
              "asset_comparison": 0}
    data.write_text("\n".join(json.dumps({"text": f"Gold rises {i}", "labels": labels}) for i in range(3)) + "\n\n")
    capsys.readouterr()
    out = tmp_path / "result.json"
    assert megafin_main(["eval", "classification", "--ckpt", str(trained), "--task",
                         "headline", "--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # Questions rotate over the six headline labels by position: yes, no, no.
    assert (result["examples"], result["majority_label"], result["majority_rate"]) == (3, "no", pytest.approx(2 / 3))
    assert 0.0 <= result["accuracy"] <= 1.0 and sum(result["predicted"].values()) == 3


def test_task_prompts_are_the_ones_trained_on():
    """The prompt text is shared by training records and evaluation: pinned here so neither drifts alone."""
    from megafin.eval.tasks import sft_records
    from megafin.eval.tasks.registry import get_task

    row = {"text": "Profit rose.", "label": "positive"}
    assert get_task("fpb").record(row, 0) == {
        "prompt": "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\n"
                  "Input: Profit rose.\nAnswer:", "response": "positive"}
    labels = {"price_up": 1, "price_constant": 0, "price_down": 0, "past_information": 1, "future_information": 0,
              "asset_comparison": 0}
    assert get_task("headline").record({"text": "Gold up", "labels": labels}, 7) == {
        "prompt": "Does the news headline talk about price staying constant? Answer Yes or No.\nInput: Gold up\n"
                  "Answer:", "response": "No"}
    assert sft_records.SETS["tfns"](row, 0) == get_task("tfns").record(row, 0)
    assert list(sft_records.SETS) == ["fpb", "fiqa_sa", "tfns", "headline", "xbrl", "headline_sentiment"]


def test_a_registered_task_reaches_the_cli_and_other_families_are_refused(monkeypatch, tmp_path, capsys):
    """A task is one file plus its registry entry: the CLI's --task choices follow the registry, and the
    classification runner refuses (one line, exit 2) a task another runner scores."""
    from dataclasses import dataclass

    from megafin.cli import build_parser
    from megafin.eval.tasks import registry

    @dataclass(frozen=True)
    class Summary:
        name: str = "summary"
        title: str = "summaries"
        family: str = "rouge"

        def record(self, row: dict, k: int) -> dict:
            return {"prompt": row["text"], "response": row["summary"]}

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "classification", "--ckpt", "c", "--task", "summary", "--data", "d"])
    monkeypatch.setitem(registry.TASKS, "summary", Summary())
    with pytest.raises(SystemExit):  # still not a classification task
        build_parser().parse_args(["eval", "classification", "--ckpt", "c", "--task", "summary", "--data", "d"])
    monkeypatch.setitem(registry.TASKS, "summary", Summary(family="classification"))
    args = build_parser().parse_args(["eval", "classification", "--ckpt", "c", "--task", "summary", "--data", "d"])
    assert args.task == "summary"
    capsys.readouterr()
    monkeypatch.setitem(registry.TASKS, "summary", Summary())
    args.ckpt, args.data = str(tmp_path), str(tmp_path / "d.jsonl")
    from megafin.eval.classification import main as run

    assert run(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "megafin eval: error: task 'summary' is scored by the rouge runner, not classification"]
