"""`data_prep pretrain --shard i/N`: the shards' items are exactly one run's, in order, and start-up is light."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from dp_helpers import REPO, write_jsonl


def _inputs(tmp_path):
    """Plain JSONL with blank, malformed, long and final-newline-less lines, a gzip file, an empty file."""
    rows = [{"text": f"doc {i} " + "word " * (i % 7)} for i in range(40)]
    rows[5] = "not json"
    rows[9] = ""
    rows[17] = {"text": "L" * 5000}  # one line wider than a cut: some shard ranges hold no line start
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": f"gz {i}"}) + "\n" for i in range(5))
    c = tmp_path / "c.jsonl"
    c.write_text("\n".join(json.dumps({"text": f"c {i}"}) for i in range(7)))  # no final newline
    (tmp_path / "d.jsonl").write_text("")
    return [str(a), str(tmp_path / "b.jsonl.gz"), str(tmp_path / "d.jsonl"), str(c)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_shards_partition_the_items_of_one_run_in_order(tmp_path, n):
    from data_prep.shards import Shard, iter_pieces, plan
    from data_prep.sources import iter_raw

    paths = _inputs(tmp_path)
    whole = [(r.source, r.line, r.data) for r in iter_raw(paths)]
    parts = [[(r.source, r.line, r.data) for r in iter_pieces(plan(paths, Shard(i, n)), 1 << 20)] for i in range(n)]
    assert [x for p in parts for x in p] == whole  # same items, same line numbers, same order, nothing twice
    if n == 64:
        assert sum(not p for p in parts) > 0  # the long line leaves shards without a line start
    assert sum(1 for i in range(n) for pc in plan(paths, Shard(i, n)) if pc.path.endswith(".gz")) == 1


def test_oversize_lines_keep_their_numbers_in_a_shard(tmp_path):
    from data_prep.shards import Shard, iter_pieces, plan
    from data_prep.sources import iter_raw

    p = write_jsonl(tmp_path / "o.jsonl", [{"text": "x" * 300} if i % 3 == 0 else {"text": "y"} for i in range(30)])
    whole = [(r.line, r.oversize) for r in iter_raw([str(p)], max_bytes=100)]
    parts = [(r.line, r.oversize) for i in range(4) for r in iter_pieces(plan([str(p)], Shard(i, 4)), 100)]
    assert parts == whole and sum(1 for _, o in whole if o) == 10


@pytest.mark.parametrize("bad", ["3/3", "1/0", "a/4", "-1/4", "2"])
def test_bad_shard_value_is_one_line(bad):
    from data_prep.shards import parse_shard

    with pytest.raises(ValueError, match=r"^--shard .* \(expected i/N with 0 <= i < N"):
        parse_shard(bad)


def test_shard_refuses_hub_inputs(sample_tok, tmp_path):
    """(--shard with --dedup: tests/data_prep/test_merge.py.)"""
    from data_prep.cli import main

    base = ["pretrain", "--tokenizer", sample_tok, "--output-prefix", str(tmp_path / "o"), "--shard", "0/2"]
    assert main([*base, "--input", "hub:some/dataset"]) == 2
    assert not list(tmp_path.glob("o_*"))


def test_startup_imports_no_torch_megatron_or_transformers(sample_tok, tmp_path):
    """What a run imports before its first document (issue 16: start-up < 3 s): a fresh interpreter is the point."""
    src = write_jsonl(tmp_path / "one.jsonl", [{"text": "Revenue rose."}])
    code = ("import sys, runpy; sys.argv = ['data_prep'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('data_prep', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'megatron', 'transformers', 'datasets') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code, "pretrain", "--input", str(src), "--tokenizer", sample_tok,
                        "--output-prefix", str(tmp_path / "o"), "--shard", "0/1", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
    assert (tmp_path / "o_shard0-of-1_text_document.bin").is_file()
