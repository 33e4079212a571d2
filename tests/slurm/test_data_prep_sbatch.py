"""slurm/data_prep.sbatch on a real single-node Slurm: an array of N shard tasks whose last finisher merges, giving
the bytes of one `data_prep pretrain` run; a malformed array is refused in one line."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "slurm" / "data_prep.sbatch"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], str]:
    from data_prep.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("dp_corpus")
    texts = [f"Q{i % 4} revenue rose {i}% as margins widened. " * (1 + i % 5) for i in range(150)]
    paths = []
    for name, part in (("a.jsonl", texts[:100]), ("b.jsonl", texts[100:])):
        (d / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part) + "not json\n")
        paths.append(str(d / name))
    return paths, str(train_tokenizer(texts, 400, d / "tok"))


def _sbatch(slurm, out: Path, flags: list[str], args: list[str]) -> int:
    env = {**slurm.env, "MEGAFIN_HOME": str(REPO), "MEGAFIN_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = slurm.run("sbatch", "--parsable", "--cpus-per-task=1", f"--output={out}/task-%A_%a.out", *flags,
                     str(SCRIPT), *args, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def _wait_array(slurm, job: int, n: int, timeout: float = 180) -> list[str]:
    """States of the array's tasks once all are finished (`scontrol show job` lists one line per task)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = slurm.run("scontrol", "-o", "show", "job", str(job)).stdout.splitlines()
        states = [dict(kv.partition("=")[::2] for kv in ln.split()).get("JobState") for ln in lines]
        if len(states) == n and all(s in TERMINAL for s in states):
            return states
        time.sleep(0.5)
    slurm.run("scancel", str(job))
    raise AssertionError(f"array job {job} not finished after {timeout:.0f}s")


def test_array_of_shards_merges_into_one_runs_bytes(slurm, corpus, tmp_path):
    from data_prep.pretrain import pretrain

    paths, tok = corpus
    job = _sbatch(slurm, tmp_path, ["--array=0-2"],
                  ["--input", *paths, "--tokenizer", tok, "--output-prefix", str(tmp_path / "out" / "cpt"), "--quiet"])
    states = _wait_array(slurm, job, 3)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("task-*.out")))
    assert states == ["COMPLETED"] * 3, logs
    assert logs.count("merging into") == 1, logs  # exactly one task merged
    one = pretrain(paths, tok, str(tmp_path / "one" / "cpt"), quiet=True)
    for ext in (".bin", ".idx"):
        assert (tmp_path / "out" / f"cpt_text_document{ext}").read_bytes() == \
               (tmp_path / "one" / f"cpt_text_document{ext}").read_bytes()
    merged = json.loads((tmp_path / "out" / "cpt_stats.json").read_text())
    assert merged["merged_from"] == [f"cpt_shard{i}-of-3" for i in range(3)]
    assert (merged["docs_read"], merged["skipped"]) == (one.stats["docs_read"], {"malformed_json": 2})


def test_array_not_starting_at_zero_is_refused_in_one_line(slurm, corpus, tmp_path):
    paths, tok = corpus
    job = _sbatch(slurm, tmp_path, ["--array=1-2"],
                  ["--input", *paths, "--tokenizer", tok, "--output-prefix", str(tmp_path / "cpt")])
    assert _wait_array(slurm, job, 2) == ["FAILED"] * 2
    for log in tmp_path.glob("task-*.out"):
        assert log.read_text().strip() == "data-prep: error: array 1-2 of 2 tasks: expected --array=0-1"
    assert not list(tmp_path.glob("cpt*"))
