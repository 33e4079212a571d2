"""`megafin eval` with bad input: one line naming the file (and line), exit 2, before any model is built."""
from __future__ import annotations

import json

import pytest

from megafin.cli import main as megafin_main


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
