"""Checkpoints are untrusted input: no pickle in one runs code (a payload that would create a file does not), and
every broken one is a one-line CheckpointError before anything is loaded. In process, on one checkpoint of the
tiny test model saved by the trainer's own save_checkpoint."""
from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from megafin.checkpoint.errors import CheckpointError
from tests.checkpoint_payloads import Touch, replace_object
from tests.helpers import TINY_MODEL

VOCAB = 200


def _cfg(*extra: str):
    from megafin.config import load_config

    return load_config(None, [*TINY_MODEL, "train.seed=5", *extra])


def _model(*extra: str):
    from megafin.models.gpt import build_model

    return build_model(_cfg(*extra), VOCAB)


@pytest.fixture(scope="module")
def saved_model(megatron_world):
    return _model()


@pytest.fixture(scope="module")
def saved(saved_model, tmp_path_factory) -> Path:
    """A weights-only checkpoint (model, progress, RNG state: numpy arrays included) with a config snapshot."""
    from megafin.checkpoint.manager import Progress, save_checkpoint
    from megafin.config.load import config_to_dict

    return save_checkpoint(tmp_path_factory.mktemp("run"), saved_model, None, None, Progress(step=2), keep_last=5,
                           extra_meta={"vocab_size": VOCAB, "config": config_to_dict(_cfg())})


def _copy(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


def _one_line(err: pytest.ExceptionInfo, *names: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for name in names:
        assert name in text, text
    return text


def _model_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_every_pickle_of_a_real_checkpoint_passes_the_allowlists(saved, saved_model):
    """.metadata, common.pt and every ShardedObject (the RNG state's numpy arrays too) load through the restricted
    readers, and load_checkpoint restores the saved weights."""
    from megafin.checkpoint.manager import load_checkpoint
    from megafin.checkpoint.safe_load import read_dcp_metadata, torch_load_restricted
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = read_dcp_metadata(saved)
    torch_load_restricted(saved / "common.pt", "common.pt")
    objects = {}
    for index, info in md.storage_data.items():
        if isinstance(md.state_dict_metadata[index.fqn], BytesStorageMetadata):
            with open(saved / info.relative_path, "rb") as f:
                f.seek(info.offset)
                objects[index.fqn] = torch_load_restricted(io.BytesIO(f.read(info.length)), index.fqn)
    rng = next(v for k, v in objects.items() if k.startswith("rng_state"))[0]
    assert rng["numpy"][1].dtype.name == "uint32"
    model = _model()
    with torch.no_grad():  # so that the load has something to change
        for p in model.parameters():
            p.add_(1.0)
    load_checkpoint(saved, model, None, None)
    want = _model_state(saved_model)
    for key, value in _model_state(model).items():
        assert torch.equal(value, want[key]), key


@pytest.mark.parametrize("reader", ["load_checkpoint", "megatron_load", "convert_reader"])
def test_metadata_payload_does_not_run(reader, saved, megatron_world, tmp_path):
    """Each reader of `.metadata` refuses a pickle that would run code: the trainer's load (checks first), megatron
    dist_checkpointing.load with megafin's strategies (the seam itself), and the to-hf converter's reader."""
    ckpt = _copy(saved, tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(Touch(marker), f)
    model = _model()
    with pytest.raises(Exception) as err:
        if reader == "load_checkpoint":
            from megafin.checkpoint.manager import load_checkpoint

            load_checkpoint(ckpt, model, None, None)
        elif reader == "megatron_load":  # what load_checkpoint calls once its checks passed
            from megafin.checkpoint.manager import _load

            _load({"model": model.sharded_state_dict()}, ckpt)
        else:
            from megafin.convert.dcp_reader import DistCheckpointReader

            DistCheckpointReader(ckpt)
    assert not marker.exists()
    assert type(err.value).__name__ in ("CheckpointError", "ConvertError")
    assert "system" in _one_line(err, str(ckpt / ".metadata"), "refused")


@pytest.mark.parametrize("where", ["object", "common.pt"])
def test_payload_in_an_object_or_common_pt_does_not_run(where, saved, megatron_world, tmp_path):
    from megafin.checkpoint.manager import load_checkpoint

    ckpt = _copy(saved, tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    if where == "object":
        name = replace_object(ckpt, "decoder.layers.self_attention.linear_proj._extra_state", Touch(marker))
    else:
        torch.save({"payload": Touch(marker)}, ckpt / "common.pt")
        name = "common.pt"
    model = _model()
    before = _model_state(model)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, model, None, None)
    assert not marker.exists()
    _one_line(err, name, "refused")
    if where == "common.pt":  # read first: nothing of the checkpoint reached the model
        assert all(torch.equal(v, before[k]) for k, v in _model_state(model).items())


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_data_file_fails_before_loading(damage, saved, megatron_world, tmp_path):
    from megafin.checkpoint.manager import load_checkpoint

    ckpt = _copy(saved, tmp_path / "ckpt")
    data = sorted(ckpt.glob("*.distcp"))[-1]
    if damage == "missing":
        data.unlink()
    else:
        os.truncate(data, data.stat().st_size // 2)
    model = _model()
    before = _model_state(model)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, model, None, None)
    _one_line(err, str(data), damage)
    assert all(torch.equal(v, before[k]) for k, v in _model_state(model).items())  # nothing partly loaded


def test_changed_model_shape_names_the_tensor_and_both_shapes(saved, megatron_world):
    from megafin.checkpoint.manager import load_checkpoint

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(saved, _model("model.ffn_hidden_size=128"), None, None)
    _one_line(err, "decoder.layers.mlp.linear_fc1.weight", "[2, 192, 64]", "[2, 256, 64]")


def test_weights_only_checkpoint_cannot_be_resumed_with_an_optimizer_state_and_says_why(saved):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megafin.checkpoint.integrity import check_readable, check_state_matches

    _, md = check_readable(saved)
    wanted = ShardedTensor.from_rank_offsets("optimizer.state.exp_avg.embedding.word_embeddings.weight",
                                             torch.zeros(256, 64))
    with pytest.raises(CheckpointError) as err:
        check_state_matches(saved, md, {"optimizer": {"exp_avg": wanted}})
    _one_line(err, "optimizer.state.exp_avg.embedding.word_embeddings.weight", "train.init_from")


def _run_dir_with(saved: Path, tmp_path: Path, steps: dict[int, str]) -> Path:
    """A run dir whose checkpoints are copies of `saved`, each damaged as asked ("ok", "truncated", "partial")."""
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    for step, state in steps.items():
        ckpt = _copy(saved, root / f"step_{step:07d}")
        if state == "truncated":
            os.truncate(sorted(ckpt.glob("*.distcp"))[0], 10)
        elif state == "no_meta":
            (ckpt / "megafin.json").unlink()
    (root / "latest").write_text(f"step_{max(steps):07d}")
    return root.parent


def test_latest_marker_with_garbage_or_a_missing_step_is_one_line(saved, tmp_path):
    from megafin.checkpoint.manager import latest_checkpoint

    run = _run_dir_with(saved, tmp_path, {2: "ok"})
    marker = run / "checkpoints" / "latest"
    for text, expected in [(b"\x00\xffgarbage\n\x01", "unreadable"), (b"../../etc", "expected the name"),
                           (b"step_0000009", "step_0000009, which is not a complete checkpoint")]:
        marker.write_bytes(text)
        with pytest.raises(CheckpointError) as err:
            latest_checkpoint(run)
        _one_line(err, str(marker), expected)


def test_resume_auto_falls_back_to_the_newest_readable_checkpoint_and_says_why(saved, tmp_path):
    from megafin.checkpoint.manager import checkpoint_to_resume

    run = _run_dir_with(saved, tmp_path, {2: "ok", 4: "ok", 6: "truncated"})
    ckpts = run / "checkpoints"
    got, passed_over = checkpoint_to_resume(run)
    assert got == ckpts / "step_0000004"
    assert len(passed_over) == 1 and str(ckpts / "step_0000006") in passed_over[0] and "truncated" in passed_over[0]
    (ckpts / "latest").write_text("garbage")  # the marker unreadable: the newest readable one still
    got, passed_over = checkpoint_to_resume(run)
    assert got == ckpts / "step_0000004" and len(passed_over) == 2 and "latest" in passed_over[0]
    (ckpts / "latest").unlink()  # no marker, though checkpoints exist: not a silent fresh start either
    got, passed_over = checkpoint_to_resume(run)
    assert got == ckpts / "step_0000004" and "missing" in passed_over[0]


def test_resume_auto_with_no_readable_checkpoint_is_an_error_not_a_fresh_start(saved, tmp_path):
    from megafin.checkpoint.manager import checkpoint_to_resume

    run = _run_dir_with(saved, tmp_path, {2: "truncated", 4: "no_meta"})
    with pytest.raises(CheckpointError) as err:
        checkpoint_to_resume(run)
    _one_line(err, "no readable checkpoint", "step_0000002", "step_0000004")
    empty = tmp_path / "empty"
    assert checkpoint_to_resume(empty) == (None, [])


def test_next_successful_save_removes_stale_partials(saved, megatron_world, tmp_path, capsys):
    from megafin.checkpoint.manager import Progress, latest_checkpoint, save_checkpoint

    run = _run_dir_with(saved, tmp_path, {2: "ok"})
    stale = run / "checkpoints" / "step_0000003.partial"  # a crash mid-save at step 3
    shutil.copytree(saved, stale)
    final = save_checkpoint(run, _model(), None, None, Progress(step=4), keep_last=5)
    assert latest_checkpoint(run) == final
    assert not stale.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002", "step_0000004"]
    assert f"removed {stale}" in capsys.readouterr().out


def test_convert_to_hf_refuses_a_metadata_payload_with_exit_2(saved, tiny_data, tmp_path, capsys):
    from megafin.convert.cli import main

    ckpt = _copy(saved, tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(Touch(marker), f)
    code = main(["to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"),
                 "--tokenizer", str(tiny_data / "tokenizer")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists() and not (tmp_path / "hf").exists()
    assert "\n" not in err and str(ckpt / ".metadata") in err, err
