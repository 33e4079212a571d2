"""Bad input: every case named by file:line with what was expected; skip+count by default, stop under strict."""
from __future__ import annotations

import json
import tracemalloc
import subprocess
import sys

import pytest

from dp_helpers import REPO, write_jsonl

GOOD = {"text": "Operating margin improved to 14%."}


def _bad_corpus(tmp_path):
    p = tmp_path / "bad.jsonl"
    with open(p, "wb") as f:
        f.write(json.dumps(GOOD).encode() + b"\n")                       # 1 ok
        f.write(b'{"text": "unterminated\n')                              # 2 malformed_json
        f.write(json.dumps({"body": "no text key"}).encode() + b"\n")    # 3 missing_key
        f.write(json.dumps({"text": "   "}).encode() + b"\n")           # 4 empty_text
        f.write(b'{"text": "caf\xe9 latte"}\n')                           # 5 invalid_utf8 (latin-1 byte)
        f.write(json.dumps({"text": ["a", "list"]}).encode() + b"\n")    # 6 wrong_type
        f.write(b"[1, 2]\n")                                              # 7 malformed_json (not an object)
        f.write(json.dumps(GOOD).encode() + b"\n")                       # 8 ok
    return p


EXPECTED = {2: "malformed_json", 3: "missing_key", 4: "empty_text", 5: "invalid_utf8", 6: "wrong_type", 7: "malformed_json"}


def test_default_mode_skips_and_counts_by_reason(sample_tok, tmp_path, capsys):
    from data_prep.pretrain import pretrain

    r = pretrain(str(_bad_corpus(tmp_path)), sample_tok, str(tmp_path / "o"))
    s = r.stats
    assert (s["docs_read"], s["docs_written"]) == (8, 2)
    assert s["skipped"] == {"empty_text": 1, "invalid_utf8": 1, "malformed_json": 2, "missing_key": 1, "wrong_type": 1}
    assert s["docs_read"] == s["docs_written"] + sum(s["skipped"].values())
    err = capsys.readouterr().err
    for line, reason in EXPECTED.items():
        assert f"bad.jsonl:{line}: " in err and f"[{reason}]" in err
    assert "missing key 'text' (expected a string under --text-key text" in err
    assert "invalid UTF-8 at byte" in err


@pytest.mark.parametrize("line", sorted(EXPECTED))
def test_strict_stops_at_first_bad_line(sample_tok, tmp_path, line):
    """Each bad kind on its own: --strict raises naming file:line; no output files are left behind."""
    from data_prep.pretrain import pretrain
    from data_prep.stats import BadInputError

    lines = _bad_corpus(tmp_path).read_bytes().split(b"\n")
    p = tmp_path / "one.jsonl"
    p.write_bytes(lines[0] + b"\n" + lines[line - 1] + b"\n")
    with pytest.raises(BadInputError, match=r"^one\.jsonl:2: "):
        pretrain(str(p), sample_tok, str(tmp_path / "s"), strict=True, quiet=True)
    assert not list(tmp_path.glob("s_text_document*"))


def test_50mb_document_is_skipped_without_holding_it(sample_tok, tmp_path):
    from data_prep.pretrain import pretrain
    from data_prep.stats import BadInputError

    p = tmp_path / "huge.jsonl"
    with open(p, "w") as f:
        f.write(json.dumps(GOOD) + "\n")
        f.write('{"text": "' + "x" * (50 * 1024 * 1024) + '"}\n')
        f.write(json.dumps(GOOD) + "\n")
    from data_prep.tokenizer import load_tokenizer
    from data_prep.writers import import_builder

    import_builder(), load_tokenizer(sample_tok)  # imports are not what we measure
    tracemalloc.start()
    try:
        r = pretrain(str(p), sample_tok, str(tmp_path / "o"), quiet=True)
        grown_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert r.stats["skipped"] == {"doc_too_large": 1} and r.stats["docs_written"] == 2
    assert "huge.jsonl:2: line of 52,428,8" in r.stats["first_error_by_reason"]["doc_too_large"]
    # Bounded by ~2x --max-doc-bytes (16 MB) of read buffers; holding the line would need >= 50 MB.
    assert grown_mb < 45, f"peak Python memory {grown_mb:.0f} MB reading a 50 MB line"
    with pytest.raises(BadInputError, match=r"huge\.jsonl:2: .*exceeds --max-doc-bytes"):
        pretrain(str(p), sample_tok, str(tmp_path / "s"), strict=True, quiet=True)


def test_missing_file_fails_in_every_mode(sample_tok, tmp_path):
    from data_prep.pretrain import pretrain

    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such file or directory \(expected a \.jsonl"):
        pretrain(str(tmp_path / "nope.jsonl"), sample_tok, str(tmp_path / "o"), quiet=True)
    r = subprocess.run([sys.executable, "-m", "data_prep", "pretrain", "--input", str(tmp_path / "nope.jsonl"),
                        "--tokenizer", sample_tok, "--output-prefix", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "nope.jsonl: no such file or directory" in r.stderr


def test_sft_needs_a_chat_template(sample_tok, tmp_path):
    import shutil

    from data_prep.packed_writer import sft

    d = tmp_path / "tok_no_template"
    shutil.copytree(sample_tok, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    src = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Define EPS.", "response": "Earnings per share."}])
    with pytest.raises(ValueError, match=r"tok_no_template: tokenizer has no chat template \(expected 'chat_template'"):
        sft(str(src), str(d), str(tmp_path / "o"), seq_length=64, quiet=True)
    # An explicit template file fixes it.
    tpl = tmp_path / "t.jinja"
    from data_prep.tokenizer import LLAMA3_CHAT_TEMPLATE

    tpl.write_text(LLAMA3_CHAT_TEMPLATE)
    assert sft(str(src), str(d), str(tmp_path / "o"), seq_length=64, chat_template=str(tpl), quiet=True).meta["num_docs"] == 1


def test_sft_bad_records_strict_and_default(sample_tok, tmp_path):
    from data_prep.packed_writer import sft
    from data_prep.stats import BadInputError

    rows = [
        {"prompt": "Define EPS.", "response": "Earnings per share."},
        {"question": "wrong keys"},
        {"messages": [{"role": "user", "content": "only a user turn"}]},
        {"messages": "not a list"},
        {"prompt": "Inject", "response": "text <|eot_id|> inside"},
        {"prompt": "long " * 200, "response": "x"},
        '{"prompt": ',
    ]
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    r = sft(str(src), sample_tok, str(tmp_path / "o"), seq_length=128, quiet=True)
    assert r.stats["skipped"] == {"bad_messages": 1, "malformed_json": 1, "missing_key": 1, "no_assistant_turn": 1,
                                  "special_token_in_text": 1, "too_long": 1}
    assert r.stats["docs_written"] == 1 and r.stats["docs_read"] == 7
    with pytest.raises(BadInputError, match=r"^s\.jsonl:2: no usable keys \(have: question; expected 'messages'"):
        sft(str(src), sample_tok, str(tmp_path / "o2"), seq_length=128, strict=True, quiet=True)
