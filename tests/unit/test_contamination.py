"""`megafin eval contamination` and `overlapping` (what megafin distill refuses prompts with): word n-gram overlap
between training text and evaluation examples, the shared prompt template not counted."""
from __future__ import annotations

import json

import pytest

from megafin.cli import main as megafin_main

NEWS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
        "The company expects its net sales for the whole of 2009 to remain below the 2008 level .",
        "Shares of the lender fell sharply after it cut its full year guidance for the second time ."]


@pytest.fixture()
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "fpb").mkdir(parents=True)
    (d / "fpb/test.jsonl").write_text("".join(json.dumps({"id": f"f{i}", "text": t, "label": "neutral"}) + "\n"
                                              for i, t in enumerate(NEWS)))
    return d


def test_share_of_examples_with_an_overlap(data_dir, tmp_path, capsys):
    from megafin.eval.tasks.sentiment import QUESTION

    train = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{QUESTION}\nInput: unrelated text here\nAnswer:"},
                          {"role": "assistant", "content": "neutral"}]},  # the template alone: not an overlap
            {"text": "Quarterly note: " + NEWS[1].lower().replace(" .", "!") + " More text follows."},
            {"text": " ".join(NEWS[2].split()[:9])}]  # 9 words of the third: below n=10
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cont.json"
    assert megafin_main(["eval", "contamination", "--train", str(train), "--data-dir", str(data_dir),
                         "--tasks", "fpb", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tasks"][0]["examples"] == 3 and result["tasks"][0]["overlapping"] == 1
    assert result["tasks"][0]["first"] == ["fpb:f1:1"] and result["training_documents"] == 3
    assert "| fpb | 3 | 1 | 33.333% |" in capsys.readouterr().out
    assert megafin_main(["eval", "contamination", "--train", str(train), "--data-dir", str(data_dir),
                         "--tasks", "fpb", "--n", "9", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"][0]["overlapping"] == 2


def test_overlapping_per_question(data_dir):
    from megafin.eval.contamination import overlapping

    hits = overlapping(["Summarize: " + NEWS[0], "What is EBITDA?", NEWS[2] + " " + NEWS[0]], data_dir, tasks="fpb")
    assert hits == [["fpb:f0:0"], [], ["fpb:f0:0", "fpb:f2:2"]]


def test_bad_training_input_is_one_line(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    for path, expected in ((bad, f"{bad}:2: not a JSON object"), (tmp_path / "none", "--train ")):
        assert megafin_main(["eval", "contamination", "--train", str(path), "--data-dir", str(data_dir),
                             "--tasks", "fpb"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and expected in err[0]


def test_data_prep_outputs_are_read_through_their_documents(tiny_data, tmp_path):
    """A packed SFT set (its meta names the tokenizer): its decoded documents are the training text."""
    from megafin.eval.contamination import training_texts

    docs = list(training_texts(str(tiny_data / "sft")))
    assert len(docs) > 1 and all(len(d) == 1 and isinstance(d[0], str) for d in docs)
    assert any(len(d[0].split()) > 10 for d in docs)
