"""train.eval_tasks / train.eval_every: a tiny training run logs task scores of its live model to metrics.jsonl at
the due steps; bad settings are one config line each, before any process group."""
from __future__ import annotations

import json

import pytest

from megafin.cli import main as megafin_main
from tests.helpers import FAST, TINY_MODEL, TINY_RECIPE, BatchedRuns, data_overrides

MODEL = [o for o in TINY_MODEL if not o.startswith("model.max_position_embeddings")]


def test_training_logs_task_scores(shared_data, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert megafin_main(["train", str(TINY_RECIPE), *FAST, *MODEL, *data_overrides(tiny_data), "train.steps=2",
                         "scheduler.warmup_steps=0", f"run_dir={run}", "train.eval_tasks=[fpb, tfns]",
                         "train.eval_every=2", "train.eval_limit=3", f"train.eval_data_dir={shared_data}"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert not any(k.startswith("eval/") for k in records[0])
    scores = {k: v for k, v in records[1].items() if k.startswith("eval/")}
    assert {"eval/fpb/accuracy", "eval/fpb/weighted_f1", "eval/tfns/accuracy", "eval/seconds"} <= set(scores)
    assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k != "eval/seconds")
    assert "not evaluated" not in capsys.readouterr().out


def test_bad_eval_settings_are_config_lines(tmp_path, tiny_data, capsys):
    code = megafin_main(["train", str(TINY_RECIPE), *FAST, *data_overrides(tiny_data), f"run_dir={tmp_path / 'r'}",
                         "train.eval_tasks=[fpb, nope]", "train.eval_every=0", f"train.eval_data_dir={tmp_path}"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert "megafin: config error: train.eval_every: expected a positive number of steps with train.eval_tasks, " \
           "got 0" in err
    assert any(line.startswith("megafin: config error: train.eval_tasks: expected names of fpb") and "'nope'" in line
               for line in err)
    assert f"megafin: config error: train.eval_data_dir: expected fpb/test.jsonl in {tmp_path} for task fpb" in err


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    """The one-process run of each model, shared by the layouts (run in this process by the first that needs it)."""
    runs = {}

    def get(common: list[str]):
        key = tuple(common)
        if key not in runs:
            run = tmp_path_factory.mktemp("one_process")
            assert megafin_main(["train", str(TINY_RECIPE), *common, f"run_dir={run}"]) == 0
            runs[key] = run
        return runs[key]

    return get


LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2"], "cp2": ["parallel.cp=2"],
           "pp2vp2": ["parallel.pp=2", "parallel.virtual_pp=2"]}


def _common(layout: list[str], tiny_data, shared_data) -> list[str]:
    layers = ["model.num_layers=4"] if any(o.startswith("parallel.virtual_pp") for o in layout) else []
    return [*FAST, *MODEL, *layers, *data_overrides(tiny_data), "train.steps=2", "scheduler.warmup_steps=0",
            "train.eval_tasks=[fpb, tfns]", "train.eval_every=2", "train.eval_limit=6",
            f"train.eval_data_dir={shared_data}"]


@pytest.fixture(scope="module")
def two_rank_runs(shared_data, tiny_data, tmp_path_factory):
    """The layouts' 2-rank runs, in one torchrun launch (tests/helpers.py: BatchedRuns): name -> run dir."""
    root = tmp_path_factory.mktemp("two_ranks")
    batch = BatchedRuns({name: (TINY_RECIPE, [*_common(layout, tiny_data, shared_data), f"run_dir={root / name}",
                                              *layout])
                         for name, layout in LAYOUTS.items()}, root / "batch")
    return batch.run_dir


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_task_scores_at_two_ranks_equal_one_process(shared_data, tiny_data, layout, one_process_runs, two_rank_runs):
    """At TP=2 the first replica's two ranks decode the live model together on their shards (vocab-parallel
    embedding and logits, row-parallel sums), at PP=2 each on its stage (hidden states sent on, logits broadcast
    from the last; chunk by chunk with virtual stages), at CP=2 its first CP rank alone: the same answers, so the
    same scores, as one process."""
    one = one_process_runs(_common(LAYOUTS[layout], tiny_data, shared_data))
    two = two_rank_runs(layout)

    def scores(run):
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        return {k: v for k, v in last.items() if k.startswith("eval/") and k != "eval/seconds"}

    want, got = scores(one), scores(two)
    assert {"eval/fpb/accuracy", "eval/tfns/accuracy"} <= set(want)
    assert got == want
