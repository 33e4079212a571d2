"""Qwen2 (the Llama block plus q/k/v biases): the export is a Qwen2ForCausalLM that transformers loads, and a
converted Qwen2 checkpoint trains (`train.init_from`), biases included, and exports again. Logit parity at TP=1 and
the bit-exact round trip are in test_parity.py, TP=2 x PP=2 in test_tp2pp2.py."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from tests.convert.hf_fixtures import read_hf_tensors
from tests.helpers import FAST, TINY_RECIPE, assert_ok, data_overrides, losses, run_train


def test_export_is_a_qwen2_that_auto_classes_load(converted, hf_logits, tokens, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    from megafin.convert.convert import to_hf

    out = to_hf(converted["qwen2_tied"], tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["use_sliding_window"] is False and cfg["num_key_value_heads"] == 2 and cfg["tie_word_embeddings"]
    assert "attention_bias" not in cfg  # a Llama key: Qwen2's biases are not switchable
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, Qwen2ForCausalLM)
    assert model.model.layers[0].self_attn.k_proj.bias.abs().max() > 0.1  # loaded, not left at HF's zero init
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, hf_logits["qwen2_tied"])


def _recipe_for(ckpt: Path, out: Path) -> Path:
    """The tiny recipe with the checkpoint's model section (family qwen2, add_qkv_bias, its shapes)."""
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["model"] = json.loads((ckpt / "megafin.json").read_text())["config"]["model"]
    out.write_text(yaml.safe_dump(raw))
    return out


def test_converted_qwen2_trains_and_exports(converted, hf_models, tiny_data, tokens, tmp_path):
    """2 training steps from the converted checkpoint move the biases (they are trained parameters, saved by the
    trainer); the trained checkpoint exports to a Qwen2 whose logits are megafin's."""
    from transformers import AutoModelForCausalLM

    from megafin.convert.convert import to_hf
    from megafin.generate.forward import forward_logits
    from megafin.runtime.model_session import load_model, megatron_session

    start = converted["qwen2"]
    proc = run_train([*FAST, *data_overrides(tiny_data), "train.steps=2", "scheduler.warmup_steps=0",
                      "checkpoint.save_at_end=true", f"run_dir={tmp_path / 'run'}", f"train.init_from={start}"],
                     recipe=_recipe_for(start, tmp_path / "qwen2.yaml"))
    assert_ok(proc)
    assert "initialized weights from" in proc.stdout
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(tmp_path / "run").values())
    trained = tmp_path / "run" / "checkpoints" / "step_0000002"
    exported = to_hf(trained, tmp_path / "hf")
    before, after = read_hf_tensors(hf_models["qwen2"]), read_hf_tensors(exported)
    assert sorted(before) == sorted(after)
    for proj in ("q_proj", "k_proj", "v_proj"):
        key = f"model.layers.0.self_attn.{proj}.bias"
        step = (after[key] - before[key]).abs().max().item()
        assert 0 < step < 0.05, (key, step)  # moved by two small Adam steps, not replaced
    with megatron_session():
        model, _, vocab = load_model(trained)
        mf_logits = forward_logits(model, tokens, vocab)
    hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (hf(tokens).logits - mf_logits).abs().max().item()
    print(f"trained qwen2: max |logit diff| megafin vs exported HF = {diff:.3g}")
    assert diff < 1e-4
