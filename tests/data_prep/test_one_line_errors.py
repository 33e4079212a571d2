"""Unreadable inputs and unwritable outputs: one line naming the file, exit 2, for every subcommand; --workers capped."""
from __future__ import annotations

import gzip
import os
import zlib

import pytest

from dp_helpers import write_jsonl

ROW = {"text": "Quarterly revenue rose while operating margin narrowed.", "prompt": "Define EPS.",
       "response": "Earnings per share.", "chosen": "Net income over shares.", "rejected": "No idea."}


def _main(argv, capsys) -> tuple[int, list[str]]:
    from data_prep.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _commands(src, tok, out) -> dict[str, list]:
    """Every subcommand, reading `src` (both sides of mix in turn) and writing at `out`."""
    packed = ["--tokenizer", tok, "--output-prefix", out, "--seq-length", 256, "--quiet"]
    return {
        "pretrain": ["pretrain", "--input", src, "--tokenizer", tok, "--output-prefix", out, "--quiet"],
        "sft": ["sft", "--input", src, *packed],
        "preference": ["preference", "--input", src, *packed],
        "mix-cpt": ["mix", "--cpt", src, "--it", src.with_name("good.jsonl"), *packed],
        "mix-it": ["mix", "--cpt", src.with_name("good.jsonl"), "--it", src, *packed],
        "tokenizer": ["tokenizer", "train", "--input", src, "--vocab-size", 300, "--out", out],
    }


CMDS = ["pretrain", "sft", "preference", "mix-cpt", "mix-it", "tokenizer"]


def _truncated_gz(tmp_path) -> tuple:
    """A .jsonl.gz cut in half, and how many whole lines precede the cut."""
    rows = [dict(ROW, text=f"{ROW['text']} Item {i}: " + " ".join(str(i * j % 997) for j in range(40)))
            for i in range(300)]
    full = gzip.compress(write_jsonl(tmp_path / "full.jsonl", rows).read_bytes())
    cut = full[: len(full) // 2]
    (tmp_path / "trunc.jsonl.gz").write_bytes(cut)
    whole_lines = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut).count(b"\n")
    assert 0 < whole_lines < len(rows)
    return tmp_path / "trunc.jsonl.gz", whole_lines


@pytest.mark.parametrize("cmd", CMDS)
def test_truncated_gzip_is_one_line_naming_file_and_rows_read(sample_tok, tmp_path, capsys, cmd):
    """Used to be an EOFError traceback (and never a silent partial dataset)."""
    src, n = _truncated_gz(tmp_path)
    write_jsonl(tmp_path / "good.jsonl", [ROW] * 3)
    out = tmp_path / "out" / "o"
    rc, err = _main(_commands(src, sample_tok, out)[cmd], capsys)
    name = cmd.split("-")[0]
    assert rc == 2 and err == [f"data_prep {name}: error: trunc.jsonl.gz: unreadable gzip after {n:,} lines (Compressed "
                               "file ended before the end-of-stream marker was reached); expected a complete gzip "
                               "file (re-download or re-compress it)"]
    assert not [p for p in (tmp_path / "out").rglob("*") if not p.is_dir()], "nothing may be written"


def test_not_gzip_at_all(sample_tok, tmp_path, capsys):
    (tmp_path / "x.jsonl.gz").write_bytes(b'{"text": "plain"}\n')
    rc, err = _main(["pretrain", "--input", tmp_path / "x.jsonl.gz", "--tokenizer", sample_tok,
                     "--output-prefix", tmp_path / "o", "--quiet"], capsys)
    assert rc == 2 and err[0].startswith("data_prep pretrain: error: x.jsonl.gz: unreadable gzip after 0 lines (Not a "
                                         "gzipped file")


@pytest.mark.parametrize("cmd", CMDS)
def test_output_under_a_file_is_one_line_naming_it(sample_tok, tmp_path, capsys, cmd):
    """Used to be a FileExistsError/NotADirectoryError traceback, for pretrain after all the tokenizing."""
    src = write_jsonl(tmp_path / "in.jsonl", [ROW] * 3)
    write_jsonl(tmp_path / "good.jsonl", [ROW] * 3)
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "sub" / "o"
    rc, err = _main(_commands(src, sample_tok, out)[cmd], capsys)
    flag = f"--out {out}" if cmd == "tokenizer" else f"--output-prefix {out}"
    assert rc == 2 and err == [f"data_prep {cmd.split('-')[0]}: error: {tmp_path / 'afile'}: not a directory "
                               f"(expected a writable directory for {flag})"]


def _unprivileged(fn) -> str:
    """fn() -> str where permission bits apply: in-process for a normal user; for root (whom they do not stop) in
    a forked child that drops to nobody first. An exception comes back as 'Type: message'."""
    def run() -> str:
        try:
            return fn()
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    if os.geteuid() != 0:
        return run()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, run().encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@pytest.fixture
def read_only_dir(sample_tok):
    """(a directory nobody may write, the tokenizer and inputs beside it, readable by anyone). Under /tmp, not
    pytest's tmp_path: that one's parents are 0700, which nobody cannot even traverse."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="dp-ro-"))
    try:
        base.chmod(0o755)
        tok = shutil.copytree(sample_tok, base / "tok")
        tok.chmod(0o755)  # copied from pytest's 0700 directory
        write_jsonl(base / "in.jsonl", [ROW] * 3)
        write_jsonl(base / "good.jsonl", [ROW] * 3)
        (base / "ro").mkdir(mode=0o555)
        yield base / "ro", tok, base / "in.jsonl"
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("cmd", CMDS)
def test_read_only_output_directory_is_one_line_naming_it(read_only_dir, cmd):
    """Used to be a PermissionError traceback, for pretrain/sft after all the tokenizing."""
    import contextlib
    import io

    from data_prep.cli import main

    ro, tok, src = read_only_dir
    # The same command into a writable place first: it works there, and the child finds every module imported
    # (nobody may not be able to read the Python installation itself).
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in _commands(src, tok, ro.parent / "ok" / "o")[cmd]]) == 0
    out = ro / "o"
    argv = [str(a) for a in _commands(src, tok, out)[cmd]]

    def run() -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        return f"{rc} {err.getvalue().strip()}"

    flag = f"--out {out}" if cmd == "tokenizer" else f"--output-prefix {out}"
    where = out if cmd == "tokenizer" else ro
    assert _unprivileged(run) == (f"2 data_prep {cmd.split('-')[0]}: error: {where}: "
                                  + ("cannot create the output directory for " + flag + ": Permission denied"
                                     if cmd == "tokenizer" else
                                     f"output directory is not writable (Permission denied; expected a writable "
                                     f"directory for {flag})"))


def test_workers_capped_at_available_cores(sample_tok, tmp_path, capsys, monkeypatch):
    """--workers 1000 on 2 cores started 1000 tokenizer processes (305 s for 40 documents)."""
    import json

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one core: no pool at all
    src = write_jsonl(tmp_path / "in.jsonl", [ROW] * 40)
    rc, err = _main(["pretrain", "--input", src, "--tokenizer", sample_tok, "--output-prefix", tmp_path / "o",
                     "--workers", 1000, "--quiet"], capsys)
    assert rc == 0 and err == ["data_prep: --workers 1000 capped at 1 (cores available)"]
    assert json.loads((tmp_path / "o_stats.json").read_text())["workers"] == 1
    rc, err = _main(["sft", "--input", src, "--tokenizer", sample_tok, "--output-prefix", tmp_path / "s",
                     "--seq-length", 64, "--workers", 3, "--quiet"], capsys)
    assert rc == 0 and err == ["data_prep: --workers 3 capped at 1 (cores available)"]
    rc, err = _main(["pretrain", "--input", src, "--tokenizer", sample_tok, "--output-prefix", tmp_path / "z",
                     "--workers", 0, "--quiet"], capsys)
    assert rc == 2 and err == ["data_prep pretrain: error: --workers 0 (expected >= 1)"]
