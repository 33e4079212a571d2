"""Bad input: one clear error naming the file or key, nothing written (exit code 2 from the CLI)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megafin.convert.errors import ConvertError
from tests.convert.hf_fixtures import megafin


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _shards(hf: Path) -> list[str]:
    return sorted(set(json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"].values()))


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging left behind"


def _from_hf_fails(hf: Path, out: Path, match: str, **kw) -> None:
    from megafin.convert.convert import from_hf

    with pytest.raises(ConvertError, match=match):
        from_hf(hf, out, **kw)
    _assert_nothing_written(out)


def test_missing_shard_is_named(hf_models, tmp_path):
    hf = _copy(hf_models["untied"], tmp_path / "hf")
    victim = _shards(hf)[3]
    (hf / victim).unlink()
    _from_hf_fails(hf, tmp_path / "out", match=f"{victim}: shard listed in model.safetensors.index.json is missing")


def test_shard_not_matching_index_is_named(hf_models, tmp_path):
    hf = _copy(hf_models["untied"], tmp_path / "hf")
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    key = "model.layers.1.mlp.up_proj.weight"
    wrong = next(s for s in _shards(hf) if s != index["weight_map"][key])
    index["weight_map"][key] = wrong
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    _from_hf_fails(hf, tmp_path / "out", match=f"{wrong}: does not match the index: tensor {key} listed")


@pytest.mark.parametrize("damage, match", [("truncate", "lies past the end of the file"),
                                           ("garbage", "not a readable safetensors file")])
def test_damaged_shard_is_named(damage, match, hf_models, tmp_path):
    hf = _copy(hf_models["untied"], tmp_path / "hf")
    victim = hf / _shards(hf)[2]
    data = victim.read_bytes()
    victim.write_bytes(data[:-10] if damage == "truncate" else b"\xff" * 64)
    _from_hf_fails(hf, tmp_path / "out", match=f"{victim.name}: .*{match}")


def test_config_not_matching_weights_names_the_key(hf_models, tmp_path):
    hf = _copy(hf_models["untied"], tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (hf / "config.json").write_text(json.dumps(cfg))
    _from_hf_fails(hf, tmp_path / "out",
                   match=r"tensor model.layers.0.mlp.gate_proj.weight has shape \[128, 64\], but config.json "
                         r"implies \[96, 64\]")


def test_missing_tensor_is_named(hf_models, tmp_path):
    hf = _copy(hf_models["tied"], tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["tie_word_embeddings"] = False  # untied needs lm_head.weight, which a tied checkpoint does not carry
    (hf / "config.json").write_text(json.dumps(cfg))
    _from_hf_fails(hf, tmp_path / "out", match="tensor lm_head.weight is missing")


@pytest.mark.parametrize("variant, change, match", [
    ("untied", {"architectures": ["GemmaForCausalLM"], "model_type": "gemma"},
     "architecture 'GemmaForCausalLM' is not supported"),
    ("untied", {"attention_bias": True}, "attention_bias=True"),
    ("untied", {"architectures": ["MistralForCausalLM"], "sliding_window": 4096}, "sliding_window=4096"),
    ("untied", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope type 'yarn'"),
    ("untied", {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
     "tensor model.layers.0.self_attn.q_proj.bias is missing"),
    ("qwen2", {"use_sliding_window": True}, "config.json: use_sliding_window=True: sliding-window attention"),
    ("qwen2", {"layer_types": ["full_attention"] * 3 + ["sliding_attention"]},
     r"config.json: layer_types=\[.*'sliding_attention'\]: only full_attention"),
], ids=["gemma", "llama-attention-bias", "mistral-sliding-window", "yarn", "qwen2-without-biases",
        "qwen2-sliding-window", "qwen2-sliding-layer"])
def test_unsupported_architecture_is_refused(variant, change, match, hf_models, tmp_path):
    hf = _copy(hf_models[variant], tmp_path / "hf")
    cfg = {**json.loads((hf / "config.json").read_text()), **change}
    (hf / "config.json").write_text(json.dumps(cfg))
    _from_hf_fails(hf, tmp_path / "out", match=match)


@pytest.mark.parametrize("tp, pp, match", [(3, 1, r"--tp 3: does not divide model.num_attention_heads=4"),
                                           (1, 3, r"--pp 3: does not divide model.num_layers=4")])
def test_tp_pp_not_dividing_the_model(tp, pp, match, hf_models, tmp_path):
    _from_hf_fails(hf_models["untied"], tmp_path / "out", match=match, tp=tp, pp=pp)


def test_existing_output_is_kept_unless_forced(hf_models, converted, tmp_path):
    from megafin.convert.convert import to_hf

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="already exists"):
        to_hf(converted["untied"], out)
    assert (out / "keep.txt").read_text() == "mine"
    to_hf(converted["untied"], out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_checkpoint_config_not_matching_weights_names_the_key(converted, tmp_path):
    from megafin.convert.convert import to_hf

    ckpt = _copy(converted["untied"], tmp_path / "ckpt")
    meta = json.loads((ckpt / "megafin.json").read_text())
    meta["config"]["model"]["ffn_hidden_size"] = 96
    (ckpt / "megafin.json").write_text(json.dumps(meta))
    with pytest.raises(ConvertError, match=r"tensor decoder.layers.mlp.linear_fc1.weight has shape \[4, 256, 64\], "
                                           r"but the config in megafin.json implies \[4, 192, 64\]"):
        to_hf(ckpt, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("variant, change, match", [
    ("qwen2", {"add_qkv_bias": False}, "model.add_qkv_bias=False does not fit model.family=qwen2"),
    ("untied", {"family": "qwen2", "add_qkv_bias": True},
     "tensor decoder.layers.self_attention.linear_qkv.bias is not in the checkpoint"),
    ("untied", {"family": "mistral"}, "model.family 'mistral' is not supported"),
], ids=["qwen2-without-bias", "llama-as-qwen2", "unknown-family"])
def test_checkpoint_family_not_matching_its_tensors(variant, change, match, converted, tmp_path):
    """to-hf exports the family's architecture, which must have exactly the checkpoint's tensors."""
    from megafin.convert.convert import to_hf

    ckpt = _copy(converted[variant], tmp_path / "ckpt")
    meta = json.loads((ckpt / "megafin.json").read_text())
    meta["config"]["model"].update(change)
    (ckpt / "megafin.json").write_text(json.dumps(meta))
    with pytest.raises(ConvertError, match=match):
        to_hf(ckpt, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_checkpoint_with_missing_data_file(converted, tmp_path):
    from megafin.convert.convert import to_hf

    ckpt = _copy(converted["untied"], tmp_path / "ckpt")
    victim = sorted(ckpt.glob("*.distcp"))[0]
    victim.unlink()
    with pytest.raises(ConvertError, match=f"{victim}: checkpoint data file is missing"):
        to_hf(ckpt, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_cli_exit_code_2_and_one_line(hf_models, tmp_path):
    hf = _copy(hf_models["untied"], tmp_path / "hf")
    (hf / _shards(hf)[0]).unlink()
    proc = megafin(["convert", "from-hf", "--hf", str(hf), "--out", str(tmp_path / "out"), "--tp", "2"])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("megafin convert: error:")]
    assert len(lines) == 1 and f"{_shards(hf)[0]}: shard listed in" in lines[0], proc.stderr
    _assert_nothing_written(tmp_path / "out")
