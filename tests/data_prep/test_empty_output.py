"""A run that would write nothing is an error (one line, exit 2) unless --allow-empty; with it, the dataset loads."""
from __future__ import annotations

import json

import pytest

from dp_helpers import write_jsonl


def _main(argv, capsys) -> tuple[int, list[str]]:
    """data_prep's CLI in-process: (exit code, stderr lines)."""
    from data_prep.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _inputs(tmp_path):
    return {
        "empty": tmp_path / "empty.jsonl",
        "blank": tmp_path / "blank.jsonl",
        "typo": write_jsonl(tmp_path / "finance.jsonl", [{"text": f"Revenue rose {i}%."} for i in range(40)]),
    }


@pytest.mark.parametrize("case", ["empty", "blank", "typo"])
def test_pretrain_writing_nothing_exits_2_naming_input_and_reason(sample_tok, tmp_path, capsys, case):
    src = _inputs(tmp_path)
    src["empty"].write_text("")
    src["blank"].write_text("\n\n  \n")
    out = tmp_path / "o"
    extra = ["--text-key", "txt"] if case == "typo" else []
    rc, err = _main(["pretrain", "--input", src[case], "--tokenizer", sample_tok, "--output-prefix", out,
                     "--quiet", *extra], capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"data_prep pretrain: error: {src[case].name}: 0 documents written (")
    if case == "typo":
        assert "40 rows read, skipped: missing_key 40, first finance.jsonl:1: missing key 'txt'" in err[0]
        assert err[0].endswith("check --text-key, or pass --allow-empty to write an empty dataset")
    else:
        assert "(no rows: the input is empty or only blank lines)" in err[0]
    assert not list(tmp_path.glob("o_*")), "nothing may be written"


def test_pretrain_allow_empty_writes_a_dataset_megatron_opens(sample_tok, tmp_path, capsys):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_prep.outputs import check_complete

    (tmp_path / "empty.jsonl").write_text("")
    rc, _ = _main(["pretrain", "--input", tmp_path / "empty.jsonl", "--tokenizer", sample_tok,
                   "--output-prefix", tmp_path / "o", "--quiet", "--allow-empty"], capsys)
    assert rc == 0
    prefix = str(tmp_path / "o_text_document")
    for mmap in (True, False):  # numpy cannot memory-map an empty .bin: the writer must not leave one
        ds = IndexedDataset(prefix, mmap=mmap)
        assert len(ds) == 0 and ds.sequence_lengths.size == 0
    stats = json.loads((tmp_path / "o_stats.json").read_text())
    assert (stats["docs_read"], stats["docs_written"], stats["tokens"]) == (0, 0, 0)
    assert check_complete(prefix) is None


def test_pretrain_rows_partly_usable_is_not_empty(sample_tok, tmp_path, capsys):
    """Only zero output is refused: one good row among bad ones is written as before."""
    src = write_jsonl(tmp_path / "mixed.jsonl", [{"body": "x"}, {"text": "Net income fell."}, "{bad json"])
    rc, _ = _main(["pretrain", "--input", src, "--tokenizer", sample_tok, "--output-prefix", tmp_path / "o",
                     "--quiet"], capsys)
    assert rc == 0 and json.loads((tmp_path / "o_stats.json").read_text())["docs_written"] == 1


@pytest.mark.parametrize("cmd", ["sft", "preference"])
def test_packed_on_empty_input_is_one_line(sample_tok, tmp_path, capsys, cmd):
    """sft on an empty input used to end in a traceback (numpy cannot mmap the empty stage file)."""
    (tmp_path / "empty.jsonl").write_text("")
    rc, err = _main([cmd, "--input", tmp_path / "empty.jsonl", "--tokenizer", sample_tok,
                     "--output-prefix", tmp_path / "o", "--seq-length", 64, "--quiet"], capsys)
    unit = "examples" if cmd == "sft" else "pairs"
    assert rc == 2 and err == [f"data_prep {cmd}: error: empty.jsonl: 0 {unit} written (no rows: the input is empty "
                               "or only blank lines); pass --allow-empty to write an empty dataset"]
    assert not list(tmp_path.glob("o*"))


def test_sft_every_row_skipped_names_the_top_reason(sample_tok, tmp_path, capsys):
    rows = [{"text": "no instruction keys"}] * 3 + ['{"prompt": ']
    rc, err = _main(["sft", "--input", write_jsonl(tmp_path / "it.jsonl", rows), "--tokenizer", sample_tok,
                     "--output-prefix", tmp_path / "o", "--seq-length", 64, "--quiet"], capsys)
    assert rc == 2 and len(err) == 1
    assert "it.jsonl: 0 examples written (4 rows read, skipped: missing_key 3, first it.jsonl:1: no usable keys" in err[0]
    assert "; malformed_json 1)" in err[0]


@pytest.mark.parametrize("empty_side", ["cpt", "it"])
def test_mix_with_one_side_empty_is_an_error(sample_tok, tmp_path, capsys, empty_side):
    """Downsampling to --cpt-ratio keeps nothing of the other side either: it used to exit 0 with 0 packs."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cpt = write_jsonl(tmp_path / "cpt.jsonl", [{"text": "Margins widened."}] * 4)
    it = write_jsonl(tmp_path / "it.jsonl", [{"prompt": "Define EPS.", "response": "Earnings per share."}] * 4)
    rc, err = _main(["mix", "--cpt", empty if empty_side == "cpt" else cpt, "--it", empty if empty_side == "it" else it,
                     "--tokenizer", sample_tok, "--output-prefix", tmp_path / "o", "--seq-length", 64, "--quiet"],
                    capsys)
    unit = "CPT documents" if empty_side == "cpt" else "instruction examples"
    assert rc == 2 and err == [f"data_prep mix: error: empty.jsonl: 0 {unit} written (no rows: the input is empty or "
                               "only blank lines); mix needs both sides for --cpt-ratio 0.5; pass --allow-empty to "
                               "write no packs"]
    assert not list(tmp_path.glob("o_*"))


def test_packed_allow_empty_is_loadable(sample_tok, tmp_path, capsys):
    from data_prep.outputs import check_complete
    from megafin.data.packed_dataset import PackedSequences

    (tmp_path / "empty.jsonl").write_text("")
    rc, _ = _main(["sft", "--input", tmp_path / "empty.jsonl", "--tokenizer", sample_tok, "--output-prefix",
                   tmp_path / "o", "--seq-length", 64, "--quiet", "--allow-empty"], capsys)
    assert rc == 0
    prefix = str(tmp_path / "o")
    assert len(PackedSequences(prefix)) == 0
    assert PackedSequences(prefix).meta["num_packs"] == 0 and check_complete(prefix) is None


@pytest.mark.parametrize("case", ["empty", "typo"])
def test_tokenizer_train_without_text_is_an_error(tmp_path, capsys, case):
    """It used to save a bytes-only tokenizer (256 ids) whatever --vocab-size asked for."""
    src = tmp_path / "c.jsonl"
    if case == "empty":
        src.write_text("\n")
    else:
        write_jsonl(src, [{"text": "Revenue rose."}] * 5)
    key = ["--text-key", "txt"] if case == "typo" else []
    rc, err = _main(["tokenizer", "train", "--input", src, "--vocab-size", 300, "--out", tmp_path / "tok", *key],
                    capsys)
    assert rc == 2 and len(err) == 1
    if case == "empty":
        assert err[0] == ("data_prep tokenizer: error: c.jsonl: no text under 'text' to train on (no rows: the input "
                          "is empty or only blank lines)")
    else:
        assert err[0].endswith("c.jsonl: no text under 'txt' to train on (5 rows read, none with text: "
                               "missing_key 5); check --text-key")
    assert not (tmp_path / "tok" / "tokenizer.json").exists()
