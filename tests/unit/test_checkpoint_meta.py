"""megafin.json through CheckpointMeta: the bytes the trainer's save_checkpoint and `convert from-hf` wrote before
CheckpointMeta existed read back and write out unchanged, and a malformed file is one CheckpointError line."""
from __future__ import annotations

import json

import pytest

from megafin.checkpoint.errors import CheckpointError
from megafin.checkpoint.meta import META, CheckpointMeta

CONFIG = {"stage": "cpt", "model": {"family": "llama", "num_layers": 2}}
# As save_checkpoint wrote it: progress, layout, then extra_meta (vocab_size, config); json.dumps(indent=2).
TRAINED = {"step": 30, "consumed_samples": 240, "consumed_tokens": 61440, "layout": {"tp": 2, "pp": 1, "dp": 2},
           "vocab_size": 1000, "config": CONFIG}
# As from-hf wrote it: the trainer's keys for one process, plus converted_from.
CONVERTED = {"step": 0, "consumed_samples": 0, "consumed_tokens": 0, "layout": {"tp": 1, "pp": 1, "dp": 1},
             "vocab_size": 1000, "config": CONFIG,
             "converted_from": {"hf_dir": "/hf", "architecture": "Qwen2ForCausalLM", "hf_dtype": "bf16",
                                "requested_layout": {"tp": 2, "pp": 2}}}
# save_checkpoint without extra_meta.
BARE = {"step": 4, "consumed_samples": 0, "consumed_tokens": 0, "layout": {"tp": 1, "pp": 1, "dp": 1}}


@pytest.mark.parametrize("raw", [TRAINED, CONVERTED, BARE], ids=["trained", "converted", "bare"])
def test_old_files_round_trip_byte_for_byte(raw, tmp_path):
    old_bytes = json.dumps(raw, indent=2)
    (tmp_path / META).write_text(old_bytes)
    meta = CheckpointMeta.read(tmp_path)
    assert meta.step == raw["step"] and meta.layout == raw["layout"] and meta.config == raw.get("config")
    assert meta.to_json() == old_bytes
    out = tmp_path / "again"
    out.mkdir()
    meta.write(out)
    assert (out / META).read_text() == old_bytes and CheckpointMeta.read(out) == meta
    assert json.loads(meta.to_json()) == raw  # what the old reader (json.loads + keys) sees


@pytest.mark.parametrize("change, message", [
    ({"stepz": 3}, "unknown key 'stepz' (a megafin.json holds step, consumed_samples, consumed_tokens, layout, "
                   "vocab_size, config, converted_from)"),
    ({"layout": None}, "layout: expected an object of positive integers tp, pp, dp, got None"),
    ({"step": "3"}, "step: expected a non-negative integer, got '3'"),
    ({"vocab_size": 0}, "vocab_size: expected a positive integer, got 0"),
], ids=["unknown", "bad-layout", "string-step", "zero-vocab"])
def test_a_malformed_file_is_one_line(change, message, tmp_path):
    (tmp_path / META).write_text(json.dumps({**TRAINED, **change}))
    with pytest.raises(CheckpointError) as err:
        CheckpointMeta.read(tmp_path)
    assert str(err.value) == f"{tmp_path / META}: {message}"


def test_a_missing_key_is_one_line(tmp_path):
    (tmp_path / META).write_text(json.dumps({k: v for k, v in TRAINED.items() if k != "consumed_tokens"}))
    with pytest.raises(CheckpointError) as err:
        CheckpointMeta.read(tmp_path)
    assert str(err.value) == (f"{tmp_path / META}: missing key 'consumed_tokens' "
                              f"(required: step, consumed_samples, consumed_tokens, layout)")
