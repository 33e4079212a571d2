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
