"""megafin's lm-eval task YAMLs: current with the task registry, and on a tiny exported HF model lm-eval's outputs and
scores equal `megafin eval run`'s (hf and megafin engines) on the same FPB examples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval_fixtures import eval_model  # noqa: F401  (fixture)

LIMIT = 6


def test_shipped_yamls_are_the_registry_s(tmp_path):
    from megafin.eval.lm_eval_tasks import HERE, PREFIX, write_all
    from megafin.eval.tasks.registry import EVAL_TASKS

    generated = {p.name: p.read_text() for p in write_all(tmp_path)}
    shipped = {p.name: p.read_text() for p in HERE.glob(f"{PREFIX}*.yaml")}
    assert shipped == generated, "run `python -m megafin.eval.lm_eval_tasks` to regenerate the shipped YAMLs"
    assert set(generated) == {f"{PREFIX}{name}.yaml" for name in EVAL_TASKS}


def test_lm_eval_path_prints_the_include_path(capsys):
    from megafin.cli import main as megafin_main
    from megafin.eval.lm_eval_tasks import HERE

    assert megafin_main(["eval", "lm-eval-path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == HERE and (HERE / "utils.py").is_file()


def test_aggregation_hook_is_megafin_s_score(shared_data):
    """lm-eval's aggregation hook on hand-made outputs (right, wrong, unparsable) gives megafin's score."""
    from megafin.eval.lm_eval_tasks import utils
    from megafin.eval.run import prepare, score_task
    from megafin.eval.tasks.registry import get_eval_task

    docs = utils.fpb_dataset(data_dir=str(shared_data))["test"]
    [p] = prepare([get_eval_task("fpb")], shared_data, 8)
    outputs = [e.gold if k % 3 == 0 else ("positive" if e.gold != "positive" else "negative") if k % 3 == 1 else
               "no idea" for k, e in enumerate(p.examples)]
    items = [utils.process_results(docs[k], [outputs[k]])["accuracy"] for k in range(8)]
    assert docs[0]["prompt"] == p.examples[0].messages[0]["content"]
    entry, _ = score_task(p.task, p.examples, outputs, resamples=0)
    assert utils.aggregate(items[::-1]) == pytest.approx(entry["score"]) == pytest.approx(3 / 8)


def test_lm_eval_agrees_with_megafin_eval_run(shared_data, eval_model, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from megafin.eval.lm_eval_tasks import include_path
    from megafin.eval.run import run

    hf, ckpt = eval_model
    meta = {"data_dir": str(shared_data)}
    # add_bos_token=False: lm-eval would prepend BOS to a chat template that writes none; megafin's engines (and
    # vLLM's chat API) feed the template's tokens as they are.
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf},dtype=float32,device=cpu,add_bos_token=False",
        tasks=["megafin_fpb"], task_manager=TaskManager(include_path=include_path(), metadata=meta), metadata=meta,
        apply_chat_template=True, limit=LIMIT, batch_size=LIMIT, bootstrap_iters=0, log_samples=True)
    lm_outputs = [s["resps"][0][0] for s in sorted(out["samples"]["megafin_fpb"], key=lambda s: s["doc_id"])]
    lm_score = out["results"]["megafin_fpb"]["accuracy,none"]
    for engine, model in (("hf", hf), ("megafin", ckpt)):
        results = run(str(model), "fpb", tmp_path / engine, data_dir=shared_data, engine=engine, limit=LIMIT,
                      resamples=10, log=lambda _: None)
        rows = [json.loads(x) for x in (tmp_path / engine / "predictions/fpb.jsonl").read_text().splitlines()]
        assert [r["output"] for r in rows] == lm_outputs, engine
        assert results["tasks"][0]["score"] == pytest.approx(lm_score), engine
