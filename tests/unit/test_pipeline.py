"""megafin pipeline's mechanics with stub stages registered through the pipeline's stage registry: stamps, skip,
resume, invalidation of a changed input and everything downstream, --from/--until, and bad YAML as one line (exit
2) before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megafin.pipeline.registry import StageKind, register_kind
from tests.helpers import REPO

RUNS: list[tuple[str, bool]] = []  # (stage, resumed) for every run of a stub stage


@register_kind("stub")
class Stub(StageKind):
    """Writes out.txt = its `value` + the outputs it reads; `fail: true` raises after writing partial.txt (an
    interrupted attempt). `unstamped` settings: `note`."""
    unstamped = ("note",)

    def check(self, s):
        if "value" not in s:
            yield ("value",), "a value", ...

    def output(self, stage_dir: Path) -> Path:
        return stage_dir / "out.txt"

    def run(self, stage) -> None:
        RUNS.append((stage.name, stage.resumed))
        read = [Path(p).read_text() for p in stage.settings.get("reads", [])]
        if stage.settings.get("fail") and not (stage.directory / "partial.txt").exists():
            (stage.directory / "partial.txt").write_text("half")
            raise KeyboardInterrupt  # stands for a kill: the stage never finishes
        (stage.directory / "out.txt").write_text("+".join([str(stage.settings["value"]), *read]))


def write(tmp_path: Path, stages: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"out: {tmp_path / 'out'}\nstages:\n{stages}")
    return path


CHAIN = """\
  a: {kind: stub, value: 1, reads: [INPUT]}
  b: {kind: stub, value: 2, reads: ["@a"]}
  c: {kind: stub, value: 3, reads: ["@b"], note: x}
  d: {kind: stub, value: 4}
"""


def pipeline(tmp_path: Path, *flags: str, stages: str = CHAIN) -> int:
    from megafin.cli import main

    inp = tmp_path / "input.txt"
    if not inp.exists():
        inp.write_text("raw")
    RUNS.clear()
    return main(["pipeline", str(write(tmp_path, stages.replace("INPUT", str(inp)))), *flags])


def ran() -> list[str]:
    return [name for name, _ in RUNS]


def test_runs_in_order_then_skips_everything(tmp_path):
    assert pipeline(tmp_path) == 0
    assert ran() == ["a", "b", "c", "d"]
    assert (tmp_path / "out/c/out.txt").read_text() == "3+2+1+raw"
    done = json.loads((tmp_path / "out/b/.pipeline/done.json").read_text())
    assert done["inputs"] == {"a": json.loads((tmp_path / "out/a/.pipeline/done.json").read_text())["stamp"]}
    assert pipeline(tmp_path) == 0 and ran() == []


def test_changed_input_file_reruns_its_stage_and_everything_downstream(tmp_path):
    assert pipeline(tmp_path) == 0
    (tmp_path / "input.txt").write_text("new raw")
    assert pipeline(tmp_path) == 0
    assert ran() == ["a", "b", "c"]  # d reads nothing of theirs
    assert (tmp_path / "out/c/out.txt").read_text() == "3+2+1+new raw"


def test_changed_setting_reruns_downstream_only_and_unstamped_changes_nothing(tmp_path):
    assert pipeline(tmp_path) == 0
    assert pipeline(tmp_path, stages=CHAIN.replace("value: 2", "value: 20")) == 0
    assert ran() == ["b", "c"]
    assert pipeline(tmp_path, stages=CHAIN.replace("value: 2", "value: 20").replace("note: x", "note: y")) == 0
    assert ran() == []
    (tmp_path / "out/b/stale.txt").write_text("from an older input")
    assert pipeline(tmp_path) == 0 and ran() == ["b", "c"]
    assert not (tmp_path / "out/b/stale.txt").exists()  # a rerun from scratch starts from an empty directory


def test_interrupted_stage_resumes_in_place(tmp_path):
    failing = CHAIN.replace("value: 2,", "value: 2, fail: true,")
    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path, stages=failing)
    assert ran() == ["a", "b"]
    assert (tmp_path / "out/b/.pipeline/started.json").is_file()
    assert not (tmp_path / "out/b/.pipeline/done.json").exists()
    assert pipeline(tmp_path, stages=failing) == 0
    assert RUNS == [("b", True), ("c", False), ("d", False)]  # a skipped, b resumed with its partial output
    assert (tmp_path / "out/b/partial.txt").read_text() == "half"


def test_interrupted_stage_with_changed_inputs_starts_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path, stages=CHAIN.replace("value: 2,", "value: 2, fail: true,"))
    assert pipeline(tmp_path) == 0
    assert RUNS[0] == ("b", False) and not (tmp_path / "out/b/partial.txt").exists()


def test_from_and_until(tmp_path):
    assert pipeline(tmp_path, "--until", "b") == 0 and ran() == ["a", "b"]
    assert pipeline(tmp_path, "--from", "b", "--until", "c") == 0 and ran() == ["b", "c"]  # forced again
    assert pipeline(tmp_path) == 0 and ran() == ["d"]


def test_from_refuses_when_an_input_stage_is_not_done(tmp_path, capsys):
    assert pipeline(tmp_path, "--from", "c") == 2 and ran() == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["megafin pipeline: error: stage a (needed by c, d) is not done with its current inputs: run it "
                   "first (--from a, or without --from)"]
    assert pipeline(tmp_path, "--from", "zz") == 2
    assert "--from zz: not a stage of" in capsys.readouterr().err


@pytest.mark.parametrize("stages, expected", [
    ("  a: {kind: stub, value: 1}\n  b: {kind: nope}\n", ":4: stages.b.kind: expected one of "),
    ("  a: {kind: stub}\n", ":3: stages.a.value: expected a value"),
    ("  a: {kind: stub, value: 1, reads: ['@b']}\n  b: {kind: stub, value: 2}\n",
     ":3: stages.a.reads.0: expected a reference to an earlier stage (above it: none), got '@b'"),
    ("  a: {kind: stub, value: 1, reads: ['@a/x']}\n", ":3: stages.a.reads.0: expected a reference to an earlier "
                                                        "stage, not to itself"),
    ("  a: {kind: stub, value: 1}\n  a2: [1]\n", ":4: stages.a2: expected a mapping with a 'kind', got 'list'"),
    ("  a: {kind: stub, value: 1\n", ": not valid YAML: "),
    ("  A: {kind: stub, value: 1}\n", ":3: stages.A: expected a stage name of lower-case letters"),
    (f"  b: {{kind: train, recipe: {REPO}/recipes/tiny/sft.yaml, overrides: {{train.steps: 0}}}}\n",
     ":3: stages.b.overrides.train.steps: expected settings the trainer accepts (train.steps: expected a positive "
     "integer, got 0)"),
    ("  b: {kind: train, recipe: nowhere.yaml, overrides: {run_dir: x}}\n",
     ":3: stages.b.recipe: expected an existing recipe file, got 'nowhere.yaml'"),
])
def test_bad_yaml_is_one_line_exit_2_before_anything_runs(tmp_path, capsys, stages, expected):
    assert pipeline(tmp_path, stages=stages) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("megafin pipeline: error: ") for line in err)
    assert expected in err[0], err
    assert ran() == [] and not (tmp_path / "out").exists()


def test_real_kinds_check_their_settings(tmp_path, capsys):
    stages = """\
  data:
    kind: data_prep
    tokenizer: {train: {vocab_size: 100, inputs: [fpb]}}
    sets: {fpb: {path: x.jsonl, holdout: 1.5}, odd: {path: y.jsonl}}
    outputs: {sft_data: {sft: [fpb, nosuch]}}
  ev: {kind: eval, models: {a: "@data"}, data_dir: d, tasks: "fpb,nosuch"}
"""
    assert pipeline(tmp_path, stages=stages) == 2
    err = capsys.readouterr().err
    for part in (":5: stages.data.tokenizer.train.vocab_size: expected an integer >= 300, got 100",
                 ":6: stages.data.sets.fpb.holdout: expected a fraction in [0, 1), got 1.5",
                 ":6: stages.data.sets.odd.task: expected one of ",
                 ":7: stages.data.outputs.sft_data.sft.1: expected a set of this stage (fpb, odd) or a file",
                 ":8: stages.ev.tasks: expected 'all' or task names from "):
        assert part in err, err


def test_plan_lists_stamps_and_states(tmp_path, capsys):
    assert pipeline(tmp_path, "--until", "a") == 0
    capsys.readouterr()
    assert pipeline(tmp_path, "--plan") == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(n, w) for n, _, _, w in lines] == [("a", "done"), ("b", "to run"), ("c", "to run"), ("d", "to run")]
    assert ran() == []


@pytest.mark.parametrize("name", ["tiny", "llama3_8b"])
def test_shipped_pipelines_pass_their_checks(name, monkeypatch):
    """Both PIPELINE files load and pass every check (the 8B one needs recipes/llama3_8b, the scale recipes)."""
    from megafin.pipeline.spec import load_spec

    if name == "llama3_8b" and not (REPO / "recipes/llama3_8b/cpt_it_group1.yaml").is_file():
        pytest.skip("recipes/llama3_8b/ is not in this checkout")
    monkeypatch.chdir(REPO)
    spec = load_spec(REPO / "recipes/pipeline" / f"{name}.yaml")
    assert spec.names()[-1] in ("export", "eval")


def test_a_failed_megafin_command_fails_its_stage_in_one_line_with_its_code_where_asked(tmp_path, monkeypatch):
    import megafin.cli
    from megafin.pipeline.errors import PipelineError
    from megafin.pipeline.spec import load_spec
    from megafin.pipeline.stage import StageRun

    spec = load_spec(write(tmp_path, "  a: {kind: stub, value: 1}\n"))
    stage = StageRun.open(spec, "a", record={})
    calls = []
    monkeypatch.setattr(megafin.cli, "main", lambda args: calls.append(args) or (0 if args == ["ok"] else 75))
    stage.megafin(["ok"], "megafin ok")
    with pytest.raises(PipelineError) as plain:
        stage.megafin(["train", "x"], "megafin train", " (a rerun resumes)")
    assert str(plain.value) == "stage a: megafin train exited 75 (a rerun resumes)" and plain.value.code == 2
    with pytest.raises(PipelineError) as kept:
        stage.megafin(["train", "x"], "megafin train", keep_code=True)
    assert kept.value.code == 75  # a training stage's checkpoint-and-requeue exit reaches Slurm
    assert calls == [["ok"], ["train", "x"], ["train", "x"]]
