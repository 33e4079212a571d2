"""Prompts with references for `megafin distill`: the converters on the real TAT-QA dev / FinanceMath validation
rows, the rule verifier on their answers, the evaluation-overlap refusal and the one-line errors of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megafin.distill.errors import DistillError
from megafin.distill.overlap import find_overlap
from megafin.distill.prompts import read_prompts
from megafin.distill.rule_verifier import verify


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def first_rows(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def test_tatqa_dev_rows(shared_data, tmp_path):
    rows = read_prompts(first_rows(shared_data / "tatqa/dev.jsonl", tmp_path / "t.jsonl", 40))
    assert len(rows) == 40 and {r.source for r in rows} == {"tatqa"}
    raw = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    for row, src in zip(rows, raw):
        assert row.id == src["id"] and row.question == src["question"].strip()
        assert src["paragraphs"][0].strip() in row.context and str(src["table"][-1][-1]).strip() in row.context
    arithmetic = next(r for r, s in zip(rows, raw) if s["answer_type"] == "arithmetic" and s["scale"] == "percent")
    assert arithmetic.answer["kind"] == "number" and arithmetic.reference.endswith("%")
    value = arithmetic.answer["value"]
    assert verify(f"Step 1: ...\nFinal answer: {value}%", arithmetic.answer) is True
    assert verify(f"Final answer: {value * 1.5 + 1}%", arithmetic.answer) is False
    multi = next(r for r, s in zip(rows, raw) if s["answer_type"] == "multi-span")
    assert multi.answer["kind"] == "text" and verify(multi.reference, multi.answer) is None


def test_tatqa_scaled_answer_matches_bare_or_scaled_number(shared_data, tmp_path):
    rows = read_prompts(first_rows(shared_data / "tatqa/dev.jsonl", tmp_path / "t.jsonl", 40))
    scaled = next(r for r in rows if r.answer["kind"] == "number" and r.answer["scale"] == "million")
    v = scaled.answer["value"]
    assert verify(f"So the answer is {v}", scaled.answer) and verify(f"Final answer: {v * 1e6:.1f}", scaled.answer)


def test_financemath_validation_rows(shared_data, tmp_path):
    rows = read_prompts(first_rows(shared_data / "financemath/validation.jsonl", tmp_path / "f.jsonl", 5))
    raw = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r.source for r in rows] == ["financemath"] * 5
    assert rows[0].answer == {"kind": "number", "value": raw[0]["answer"], "scale": ""}
    assert raw[0]["tables"][0].strip() in rows[0].context
    assert verify(f"Final answer: {raw[0]['answer']}", rows[0].answer) is True


def test_jsonl_fields_and_choice_answers(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"q": "Which?", "gold": "B", "key": "x1"},
                                              {"q": "How much?", "gold": 12.5}])
    rows = read_prompts(path, "jsonl", {"question": "q", "reference": "gold", "id": "key"})
    assert [r.id for r in rows] == ["x1", "line-2"]
    assert rows[0].answer == {"kind": "choice", "value": "B", "scale": ""}
    assert verify("Selection: [[B]]", rows[0].answer) and not verify("The answer is C", rows[0].answer)
    assert verify("Final answer: 12.5%", rows[1].answer) and verify("Final answer: 0.125", rows[1].answer)


@pytest.mark.parametrize("rows, expected", [
    ([{"question": "Q?"}], "q.jsonl:1: field 'answer': expected a non-empty string or a number, got nothing"),
    ([{"question": "Q?", "answer": "1", "id": "a"}, {"question": "R?", "answer": "2", "id": "a"}],
     "q.jsonl:2: id 'a' already used on line 1"),
    ([["not", "an", "object"]], "q.jsonl:1: expected a JSON object, got list"),
])
def test_bad_rows_are_one_line_errors(tmp_path, rows, expected):
    with pytest.raises(DistillError) as err:
        read_prompts(write_jsonl(tmp_path / "q.jsonl", rows), "jsonl")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_overlap_with_an_eval_test_split_is_found(shared_data):
    test_question = json.loads((shared_data / "tatqa/test.jsonl").read_text().splitlines()[3])["question"]
    report = find_overlap([(1, "A question no evaluation set has, surely?"), (2, "  " + test_question.upper())],
                          shared_data)
    assert [(line, name) for line, _, name in report.hits] == [(2, "tatqa")]
    assert "tatqa/test.jsonl" in report.eval_files and "cfa/cfa_easy_test.jsonl" in report.eval_files
    # a 10-gram of it is enough; the check narrows to the tasks asked for
    words = test_question.split()
    assert find_overlap([(1, "In short, " + " ".join(words[:11]) + " etc.")], shared_data).hits
    narrowed = find_overlap([(2, test_question)], shared_data, tasks="fpb,cfa_easy")
    assert not narrowed.hits and narrowed.eval_files == ["fpb/test.jsonl", "cfa/cfa_easy_test.jsonl"]


def test_cli_refuses_overlapping_prompts_unless_allowed(shared_data, tmp_path, capsys):
    from megafin.cli import main

    test_row = json.loads((shared_data / "tatqa/test.jsonl").read_text().splitlines()[0])
    dev = first_rows(shared_data / "tatqa/dev.jsonl", tmp_path / "p.jsonl", 3)
    with dev.open("a") as f:
        f.write(json.dumps(test_row) + "\n")
    args = ["distill", "--prompts", str(dev), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "none"),
            "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "j", "--eval-data-dir",
            str(shared_data), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 of 4 questions share a 10-gram with evaluation examples (tatqa: 1)" in err
    assert "line 4" in err and "--allow-overlap" in err
    assert not (tmp_path / "out").exists()
    # allowed, or left out: the run goes on to the policy (a missing model here: one line, exit 2)
    assert main([*args, "--allow-overlap"]) == 2
    assert "--model" in capsys.readouterr().err
    from megafin.distill.pipeline import DistillSettings, load_prompts

    kept, overlap = load_prompts(DistillSettings(prompts=dev, out=tmp_path / "o", policy="p", judge_model="j",
                                                 eval_data_dir=shared_data, drop_overlap=True))
    assert [r.line for r in kept] == [1, 2, 3] and overlap["dropped"] == 1
