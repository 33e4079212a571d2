"""Validation reports every problem at once (one line each), and checks what the filesystem can tell before any
process group starts: run_dir usable, blend entries that are real, non-empty datasets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megafin.cli import main as megafin_main
from megafin.config import ConfigError, load_config, validate
from tests.helpers import REPO, TINY_RECIPE, data_overrides


def _errors(overrides, tiny_data, world=1) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(load_config(TINY_RECIPE, [*data_overrides(tiny_data), *overrides]), world_size=world)
    return err.value.lines


def test_every_problem_is_reported_one_line_each(tiny_data):
    lines = _errors(["parallel.tp=3", "optimizer.lr=-1", "precision.dtype=fp16", "scheduler.decay=step"], tiny_data)
    assert [line.split(":")[0] for line in lines] == ["parallel.tp", "precision.dtype", "optimizer.lr",
                                                      "scheduler.decay"]
    assert all("\n" not in line for line in lines)
    # A check that depends on a bad value is skipped, not reported as a second, derived problem.
    lines = _errors(["model.num_attention_heads=0"], tiny_data)
    assert lines == ["model.num_attention_heads: expected a positive integer, got 0"]


def test_unknown_keys_and_type_errors_are_all_reported(tiny_data):
    with pytest.raises(ConfigError) as err:
        load_config(TINY_RECIPE, ["model.hiden_size=3", "parallel.tp=two", "train.stepz=4", "data.blend=[{path: 3, weight: x}]"])
    assert [line.split(":")[0] for line in err.value.lines] == [
        "data.blend[0].weight", "model.hiden_size", "parallel.tp", "train.stepz"]


def test_cli_prints_each_problem_and_exits_2_before_any_process_group(tiny_data, capsys):
    import torch.distributed as dist

    code = megafin_main(["train", str(TINY_RECIPE), *data_overrides(tiny_data), "parallel.pp=3", "train.steps=0"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and not dist.is_initialized()
    assert err == ["megafin: config error: parallel.pp: expected a divisor of model.num_layers=4, got 3",
                   "megafin: config error: train.steps: expected a positive integer, got 0"]


def test_run_dir_that_is_a_file_or_cannot_be_written(tiny_data, tmp_path):
    a_file = tmp_path / "run"
    a_file.write_text("")
    assert _errors([f"run_dir={a_file}"], tiny_data) == [f"run_dir: expected a directory, not a file, got '{a_file}'"]
    assert _errors([f"run_dir={a_file}/sub"], tiny_data) == [
        f"run_dir: expected a path under a directory ({a_file} is a file), got '{a_file}/sub'"]
    # /sys refuses new files even to root (os.access would say yes to root): the probe is a real file creation.
    assert _errors(["run_dir=/sys/megafin-run"], tiny_data) == [
        "run_dir: expected a path that can be created (/sys is not writable), got '/sys/megafin-run'"]
    validate(load_config(TINY_RECIPE, [*data_overrides(tiny_data), f"run_dir={tmp_path}/new/run"]), world_size=1)
    assert not (tmp_path / "new").exists()  # validation creates nothing
    assert not list(tmp_path.glob(".probe-*"))


def _write_indexed(prefix: Path, documents: list[list[int]]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in documents:
        builder.add_document(np.asarray(doc, dtype=np.uint16), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_blend_entry_naming_an_empty_or_foreign_dataset(tiny_data, tmp_path):
    empty = tmp_path / "empty_text_document"
    _write_indexed(empty, [])
    blend = f"data.blend=[{{path: {tiny_data / 'finance_text_document'}, weight: 1}}, {{path: {empty}, weight: 1}}]"
    assert _errors([blend], tiny_data) == [
        f"data.blend[1].path: expected a dataset with documents ({empty}.idx holds none), got '{empty}'"]
    (tmp_path / "junk.bin").write_bytes(b"")
    (tmp_path / "junk.idx").write_bytes(b"not an index")
    blend = f"data.blend=[{{path: {tmp_path / 'junk'}, weight: 1}}]"
    assert _errors([blend], tiny_data)[0].startswith("data.blend[0].path: expected a Megatron indexed dataset")
    _write_indexed(tmp_path / "one", [[1, 2, 3]])
    validate(load_config(TINY_RECIPE, [*data_overrides(tiny_data),
                                       f"data.blend=[{{path: {tmp_path / 'one'}, weight: 1}}]"]), world_size=1)


def test_blend_entry_naming_an_interrupted_data_prep_output(tiny_data, tmp_path):
    """A data_prep run that died while replacing its files leaves a marker (data_prep/outputs.py): training on the
    possibly mixed set is refused before it starts, as is a set whose sizes differ from its manifest."""
    import shutil

    from data_prep.pretrain import pretrain

    prefix = tmp_path / "corpus"
    pretrain([str(REPO / "recipes/tiny/data/finance_corpus.jsonl")], str(tiny_data / "tokenizer"), str(prefix),
             quiet=True)
    dataset = f"{prefix}_text_document"
    blend = f"data.blend=[{{path: {dataset}, weight: 1}}]"
    validate(load_config(TINY_RECIPE, [*data_overrides(tiny_data), blend]), world_size=1)
    Path(dataset + ".incomplete").write_text("{}")
    lines = _errors([blend], tiny_data)
    assert len(lines) == 1 and lines[0].startswith(f"data.blend[0].path: {dataset}: incomplete data_prep output")
    Path(dataset + ".incomplete").unlink()
    shutil.copy(tiny_data / "general_text_document.bin", dataset + ".bin")  # another run's .bin beside this .idx
    lines = _errors([blend], tiny_data)
    assert len(lines) == 1 and lines[0].startswith(f"data.blend[0].path: {dataset}.bin: ") and "records" in lines[0]
    packed = f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]"
    Path(f"{tiny_data / 'preference'}.incomplete").write_text("{}")
    try:
        lines = _errors([packed, "stage=dpo", "data.format=packed"], tiny_data)
    finally:
        Path(f"{tiny_data / 'preference'}.incomplete").unlink()
    assert len(lines) == 1 and "incomplete data_prep output" in lines[0]


def test_local_attention_on_packed_data_is_refused_before_the_run():
    """megatron's local DotProductAttention asserts that no packed-sequence parameters reach it: a traceback in the
    first forward (gpu_check's stages part found it), now one line before any process group."""
    with pytest.raises(ConfigError) as err:
        validate(load_config(REPO / "recipes/tiny/sft.yaml", ["model.attention_backend=local"]), world_size=1,
                 on_this_machine=False)
    assert err.value.lines == ["model.attention_backend: expected auto, te, triton or sdpa with data.format=packed "
                               "(megatron's local attention has no packed sequences), got 'local'"]
    validate(load_config(REPO / "recipes/tiny/sft.yaml", ["model.attention_backend=sdpa"]), world_size=1,
             on_this_machine=False)
