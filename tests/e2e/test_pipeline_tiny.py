"""recipes/pipeline/tiny.yaml end to end, reduced (a few hundred rows, 2 steps per training stage, 4 examples per
evaluation task, the sample corpora for CPT): every stage kind runs for real on ../shared/data (data_prep with
held-out splits, instruct SFT, CPT+IT, distillation with `megafin serve` as the judge, RPO on labelled + distilled
pairs, held-out and test evaluation side by side, HF export); a rerun skips every stage. The full pipeline is
`make demo`."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.helpers import REPO

SAMPLES = REPO / "recipes" / "tiny" / "data"


def reduced(tmp_path: Path, shared_data: Path) -> Path:
    """tiny.yaml with small sizes; paths to ../shared/data pointed at the fixture's copy of the data dir."""
    text = (REPO / "recipes/pipeline/tiny.yaml").read_text().replace("../shared/data", str(shared_data))
    spec = yaml.safe_load(text)
    spec["out"] = str(tmp_path / "out")
    st = spec["stages"]
    cpt = [str(SAMPLES / "finance_corpus.jsonl"), str(SAMPLES / "general_corpus.jsonl")]
    st["data"]["tokenizer"]["train"].update(vocab_size=512, inputs=[*cpt, "fpb", "xbrl"])
    for name, limit in (("fpb", 150), ("fiqa_sa", 80), ("headline", 150), ("headline_sentiment", 150), ("xbrl", 40)):
        st["data"]["sets"][name]["limit"] = limit
    st["data"]["outputs"]["cpt_it"]["mix"]["cpt"] = cpt
    for stage in ("instruct", "cpt_it", "rpo"):
        st[stage]["overrides"].update({"train.steps": 2, "parallel.global_batch_size": 4, "checkpoint.interval": 0,
                                       "parallel.micro_batch_size": 4,
                                       "train.threads": 1, "model.max_position_embeddings": 1024,
                                       "scheduler.warmup_steps": 0})
    st["rpo"]["overrides"]["data.seq_length"] = 1024
    st["rpo_data"]["outputs"]["rpo"]["seq_length"] = 1024
    st["distill"]["args"].update({"limit": 2, "max-new-tokens": 8, "judge-max-tokens": 8})
    for stage in ("heldout_eval", "eval"):
        st[stage].update(limit=4)
        st[stage]["args"]["bootstrap"] = 10
    path = tmp_path / "tiny_reduced.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_tiny_pipeline_end_to_end_then_rerun_skips(tmp_path, shared_data, capsys):
    from megafin.cli import main

    pipeline = reduced(tmp_path, shared_data)
    assert main(["pipeline", str(pipeline)]) == 0
    out = tmp_path / "out"
    for stage in ("data", "instruct", "cpt_it", "distill", "rpo_data", "rpo", "heldout_eval", "eval", "export"):
        assert (out / stage / ".pipeline" / "done.json").is_file(), stage
    held = out / "data" / "heldout"
    assert sorted(p.name for p in held.iterdir()) == ["fiqa_sa", "fpb", "headline", "headline_sentiment"]
    # the same headlines held out of both sets made from the headline training split
    assert (held / "headline/test.jsonl").read_text() == (held / "headline_sentiment/test.jsonl").read_text()
    train_ids = {json.loads(x)["id"] for x in (shared_data / "fpb/train.jsonl").read_text().splitlines()[:150]}
    held_ids = {json.loads(x)["id"] for x in (held / "fpb/test.jsonl").read_text().splitlines()}
    assert held_ids and held_ids < train_ids  # held out of the training split, never the test split
    sets = json.loads((out / "data/summary.json").read_text())["sets"]
    # balanced: every label repeated to the largest (150 rows less the held-out ones, 3 labels)
    assert sets["fpb"]["records"] % 3 == 0 and sets["fpb"]["records"] > sets["fpb"]["distinct_records"]
    assert sets["headline_sentiment"]["skipped_rows"] == 0  # headlines not about the price are neutral
    stats = json.loads((out / "distill" / "stats.json").read_text())
    assert stats["prompts"] == 2 and stats["samples"] == 4, stats
    compare = (out / "eval" / "compare" / "compare.md").read_text()
    assert "IT-only" in compare and "CPT+IT+RPO" in compare
    for title in ("FPB", "FiQA-SA", "TFNS", "headlines"):
        assert f"| {title} |" in compare, compare
    assert "FiQA-SA" in (out / "heldout_eval" / "compare" / "compare.md").read_text()
    assert (out / "export" / "hf" / "config.json").is_file()
    capsys.readouterr()

    assert main(["pipeline", str(pipeline)]) == 0
    err = capsys.readouterr().err
    assert err.count("done with the same inputs") == 9 and "ran in" not in err, err
