"""The DPO reference log-prob cache in RUN_DIR is keyed by what it was computed from: new data (or another
reference or model) in the same run_dir recomputes it, and says so, instead of training against stale values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megafin.cli import main as megafin_main
from tests.helpers import FAST, REPO, losses

SAMPLE = REPO / "recipes" / "tiny" / "data" / "preference_sample.jsonl"


def _dpo(run_dir: Path, data: Path, tiny_data: Path, *extra: str) -> int:
    return megafin_main(["train", str(REPO / "recipes/tiny/dpo.yaml"), *FAST, "train.steps=1",
                         "scheduler.warmup_steps=0", f"data.tokenizer={tiny_data / 'tokenizer'}",
                         f"data.blend=[{{path: {data}, weight: 1}}]", f"run_dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def swapped_data(tiny_data, tmp_path_factory) -> Path:
    """The demo's preference pairs with chosen and rejected exchanged: same prompts, opposite preferences."""
    from data_prep.packed_writer import preference

    out = tmp_path_factory.mktemp("swapped")
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    src = out / "swapped.jsonl"
    src.write_text("".join(json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in rows))
    preference([str(src)], str(tiny_data / "tokenizer"), str(out / "preference"), seq_length=256, quiet=True)
    return out / "preference"


def test_new_data_in_the_same_run_dir_recomputes_the_reference(tiny_data, swapped_data, tmp_path, capsys):
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    assert _dpo(reused, tiny_data / "preference", tiny_data) == 0
    capsys.readouterr()
    assert _dpo(reused, swapped_data, tiny_data) == 0
    out = capsys.readouterr().out
    assert f"{reused / 'reference_logps'} was computed from another data than this run's; recomputing" in out
    assert _dpo(fresh, swapped_data, tiny_data) == 0
    # Stale log-probs gave a step-1 loss of ~100 here before; recomputed ones give exactly a fresh run's.
    assert losses(reused)[1] == losses(fresh)[1]
    meta = reused / "reference_logps" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    capsys.readouterr()
    assert _dpo(reused, swapped_data, tiny_data) == 0  # unchanged inputs: reused, not recomputed
    assert "recomputing" not in capsys.readouterr().out
    assert meta.stat().st_mtime_ns == stamp


def test_cache_key_follows_reference_model_and_shape(tiny_data, tmp_path):
    from megafin.config import load_config
    from megafin.stages.preference.reference import reference_cache_key

    base = ["train.init_from=", f"data.tokenizer={tiny_data / 'tokenizer'}",
            f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]"]
    key = lambda *o: reference_cache_key(load_config(REPO / "recipes/tiny/dpo.yaml", [*base, *o]), 1000)
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "megafin.json").write_text('{"step": 1}')
    (ref / ".metadata").write_bytes(b"\x80")
    with_ref = key(f"dpo.reference={ref}")
    assert with_ref == key(f"dpo.reference={ref}") and with_ref != key()
    (ref / "megafin.json").write_text('{"step": 2}')  # the same path, re-trained
    assert key(f"dpo.reference={ref}")["reference"] != with_ref["reference"]
    assert key("model.num_layers=2")["model"] != key()["model"]
    assert key("dpo.share_prompt=true")["share_prompt"] is True
    assert key("train.seed=7") != key()  # without a reference checkpoint the seed makes the reference
    assert key("train.steps=7") == key()  # what does not change the log-probs does not invalidate them


def test_a_broken_resume_checkpoint_fails_before_the_reference_pass(tiny_data, tmp_path, capsys):
    broken = tmp_path / "step_0000003"
    broken.mkdir()
    (broken / "megafin.json").write_text("{truncated")
    run = tmp_path / "run"
    assert _dpo(run, tiny_data / "preference", tiny_data, f"train.resume={broken}") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"megafin: checkpoint error: {broken / 'megafin.json'}: unreadable")
    assert not (run / "reference_logps").exists()  # the (long) reference pass never started
