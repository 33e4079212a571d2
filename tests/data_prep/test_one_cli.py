"""`megafin prep <cmd>` and `python -m data_prep <cmd>` are one CLI: same commands, same bytes, same errors."""
from __future__ import annotations

import json

from dp_helpers import SAMPLES


def _run(which: str, argv: list, capsys) -> tuple[int, list[str]]:
    if which == "megafin":
        from megafin.cli import main

        rc = main(["prep", *map(str, argv)])
    else:
        from data_prep.cli import main

        rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _subcommands(parser) -> set[str]:
    import argparse

    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def test_megafin_prep_has_the_data_prep_commands():
    from data_prep.cli import build_parser
    from megafin.cli import build_parser as megafin_parser

    prep = next(a for a in megafin_parser()._actions if getattr(a, "choices", None) and "prep" in a.choices)
    assert _subcommands(prep.choices["prep"]) == _subcommands(build_parser()) == {
        "tokenizer", "pretrain", "merge", "sft", "preference", "mix"}


def test_megafin_prep_sft_writes_the_same_bytes(sample_tok, tmp_path, capsys):
    outs = {}
    for which in ("megafin", "data_prep"):
        out = tmp_path / which / "sft"
        rc, _ = _run(which, ["sft", "--input", SAMPLES / "sft_sample.jsonl", "--tokenizer", sample_tok,
                             "--output-prefix", out, "--seq-length", 128, "--quiet"], capsys)
        assert rc == 0
        outs[which] = out
    names = sorted(p.name for p in outs["megafin"].parent.iterdir())
    assert names == sorted(p.name for p in outs["data_prep"].parent.iterdir())
    assert "sft_tokens.bin" in names and "sft_meta.json" in names
    for name in names:
        a, b = (outs[w].parent / name for w in ("megafin", "data_prep"))
        if name.endswith("_stats.json"):  # where the run wrote and how long it took differ; nothing else may
            da, db = json.loads(a.read_text()), json.loads(b.read_text())
            for d in (da, db):
                for k in ("output", "seconds", "docs_per_s", "tokens_per_s"):
                    d.pop(k)
            assert da == db
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_megafin_prep_bad_input_is_the_same_one_line_error(sample_tok, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all\n")
    argv = ["sft", "--input", bad, "--tokenizer", sample_tok, "--output-prefix", tmp_path / "o", "--seq-length", 64,
            "--quiet"]
    got = {which: _run(which, argv, capsys) for which in ("megafin", "data_prep")}
    rc, err = got["megafin"]
    assert rc == 2 and len(err) == 1 and err[0].startswith("data_prep sft: error: bad.jsonl.gz: unreadable gzip")
    assert got["megafin"] == got["data_prep"]
    assert not list(tmp_path.glob("o_*"))
