"""`megafin distill` end to end on ~20 real TAT-QA dev prompts and a tiny random checkpoint:

1. the policy samples through the megafin engine, and `megafin serve` of the same tiny model (started here on
   127.0.0.1) judges: a random judge writes unusable answers, so the run must finish and count every discard
   (stats.json adds up);
2. the same samples judged by a scripted judge that grades them (verbatim quotes) -> pairs JSONL ->
   `data_prep preference` -> a few steps of `dpo.loss=rpo` and of `dpo.loss=distill` on the packed pairs."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.generate.serve_fixtures import megafin_serve
from tests.helpers import FAST, REPO, TINY_MODEL, losses
from tests.judge_fixture_server import Reply, judge_server  # noqa: F401  (a fixture)

SEQ = 2048
_SOLUTION = re.compile(r"<<<SOLUTION\n(.*)\nSOLUTION>>>", re.DOTALL)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory) -> Path:
    """A random tiny Llama (tests/convert/hf_fixtures.py) with room for TAT-QA's tables (2048 positions), as a
    megafin checkpoint."""
    from megafin.convert.convert import from_hf
    from tests.convert.hf_fixtures import make_hf_llama

    root = tmp_path_factory.mktemp("distill_model")
    hf = make_hf_llama(root / "hf", tied=False, seed=3, tokenizer_dir=tiny_data / "tokenizer")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "max_position_embeddings": SEQ}))
    return from_hf(hf, root / "policy")


@pytest.fixture(scope="module")
def tatqa_prompts(shared_data: Path, tmp_path_factory) -> Path:
    """The first 20 TAT-QA dev questions whose table and paragraphs are short (they fit 2048 tokens with a
    solution and the judge's template)."""
    rows = []
    for text in (shared_data / "tatqa/dev.jsonl").read_text().splitlines():
        row = json.loads(text)
        if len(json.dumps(row["table"])) + sum(map(len, row["paragraphs"])) < 1500:
            rows.append(text)
        if len(rows) == 20:
            break
    path = tmp_path_factory.mktemp("prompts") / "tatqa_dev20.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def distill(prompts: Path, out: Path, policy: Path, judge_url: str, judge_model: str, shared_data: Path) -> int:
    from megafin.cli import main

    return main(["distill", "--prompts", str(prompts), "--out", str(out), "--model", str(policy), "--engine",
                 "megafin", "--n", "2", "--temperature", "1.0", "--max-new-tokens", "16", "--seed", "3",
                 "--judge-base-url", judge_url, "--judge-model", judge_model, "--judge-max-tokens", "16",
                 "--concurrency", "8", "--judge-timeout", "120", "--eval-data-dir", str(shared_data),
                 "--no-progress"])


def grader(request) -> Reply:
    """Grades a random solution by a hash of its text; a wrong one's first wrong step is its second half."""
    text = _SOLUTION.search(request.prompt).group(1)
    cut = text.find(" ", len(text) // 2)
    if cut <= 0 or not text[:cut].strip() or not text[cut:].strip():
        return Reply(content="no answer to grade")
    if hashlib.sha256(text.encode()).digest()[0] % 2 == 0:
        return Reply(content=json.dumps({"final_answer": text[-8:], "correct": True, "score": 0.8}))
    return Reply(content=json.dumps({"final_answer": text[-8:], "correct": False, "score": 0.3,
                                     "correct_prefix": text[:cut].strip(), "first_wrong_step": text[cut:].strip(),
                                     "correction": "Read the value from the table, then compute the change."}))


def test_tatqa_prompts_to_pairs_to_rpo(tiny_checkpoint, tatqa_prompts, tiny_data, shared_data, tmp_path,
                                       judge_server, capsys):
    with megafin_serve(tiny_checkpoint, "--engine", "megafin", "--max-batch", "8") as url:
        assert distill(tatqa_prompts, tmp_path / "random_judge", tiny_checkpoint, url, tiny_checkpoint.name,
                       shared_data) == 0
    stats = json.loads((tmp_path / "random_judge" / "stats.json").read_text())
    assert (stats["prompts"], stats["samples"], stats["judged"], stats["not_judged"]) == (20, 40, 40, 0)
    assert stats["judged"] == stats["kept"] + sum(stats["discarded"].values())
    assert sum(stats["discarded"].values()) >= 30, stats["discarded"]  # a random judge writes no usable JSON
    assert stats["overlap"]["checked"] == 20 and stats["overlap"]["overlapping"] == 0
    assert "discarded" in capsys.readouterr().out  # the final table

    graded = tmp_path / "graded"
    graded.mkdir()
    shutil.copy(tmp_path / "random_judge" / "samples.jsonl", graded / "samples.jsonl")
    server = judge_server(grader)
    assert distill(tatqa_prompts, graded, tiny_checkpoint, server.base_url, server.model, shared_data) == 0
    stats = json.loads((graded / "stats.json").read_text())
    assert stats["sampling"]["generated"] == 0 and server.requests_total == 40
    assert stats["judged"] == stats["kept"] + sum(stats["discarded"].values()) == 40
    assert stats["pairs"]["fap"] >= 2 and stats["pairs"]["scp"] >= 4, stats
    pairs = [json.loads(x) for x in (graded / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == sum(stats["pairs"].values())
    assert all({"chosen_reward", "rejected_reward", "kind", "provenance"} <= p.keys() for p in pairs)

    from megafin.cli import main

    assert main(["prep", "preference", "--input", str(graded / "pairs.jsonl"), "--tokenizer",
                 str(tiny_data / "tokenizer"), "--output-prefix", str(tmp_path / "packed" / "pairs"),
                 "--seq-length", str(SEQ)]) == 0
    prep = json.loads((tmp_path / "packed" / "pairs_stats.json").read_text())
    assert prep["docs_written"] == len(pairs) and not prep["skipped"], prep
    meta = json.loads((tmp_path / "packed" / "pairs_meta.json").read_text())
    assert meta["num_rewarded_examples"] == len(pairs)  # the judge's rewards went into the packs
    for loss in ("rpo", "distill"):  # the FinDAP loss, and reward distillation onto the judge's margins
        run_dir = tmp_path / loss
        assert main(["train", str(REPO / "recipes/tiny/dpo.yaml"), *FAST, *TINY_MODEL, "train.steps=2",
                     f"model.max_position_embeddings={SEQ}", f"data.seq_length={SEQ}", f"dpo.loss={loss}",
                     "parallel.global_batch_size=2", "scheduler.warmup_steps=0", "data.split=100,0,0",
                     f"data.tokenizer={tiny_data / 'tokenizer'}",
                     f"data.blend=[{{path: {tmp_path / 'packed' / 'pairs'}, weight: 1}}]", f"run_dir={run_dir}"]) == 0
        assert len(losses(run_dir)) == 2 and all(v is not None and v > 0 for v in losses(run_dir).values())


def test_slurm_script_cpu_profile(tiny_checkpoint, tatqa_prompts, shared_data, tmp_path):
    """slurm/distill.sbatch's CPU form, run as the batch shell would run it (SLURM_JOB_ID set, no cluster needed):
    `megafin serve` as the judge in the job, then `megafin distill` against it; outside a job it refuses."""
    import os
    import subprocess

    script = REPO / "slurm" / "distill.sbatch"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEGAFIN_HOME": str(REPO), "MEGAFIN_PYTHON": sys.executable,
           "MEGAFIN_PROFILE": "cpu", "JUDGE_MODEL": str(tiny_checkpoint), "JUDGE_ARGS": "--engine megafin",
           "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    outside = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert outside.returncode == 2 and "run this through sbatch" in outside.stderr
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(tatqa_prompts.read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(script), "--prompts", str(prompts), "--out", str(out), "--model",
                           str(tiny_checkpoint), "--n", "2", "--temperature", "1.0", "--max-new-tokens", "8",
                           "--judge-max-tokens", "8", "--eval-data-dir", str(shared_data)],
                          env={**env, "SLURM_JOB_ID": "4242"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "megafin distill exited 0" in proc.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == stats["judged"] == 6 == stats["kept"] + sum(stats["discarded"].values())
