"""from-hf gives HF's logits at TP=1, TP=2 and PP=2 (fp32, 1e-4), and from-hf -> to-hf is bit-exact (Llama and
Qwen2; TP=2 x PP=2 in test_tp2pp2.py)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.convert import parallel_worker
from tests.convert.hf_fixtures import CHAT_TEMPLATE, FP32_VARIANTS, read_hf_tensors

TOL = 1e-4


@pytest.mark.parametrize("variant", FP32_VARIANTS)
def test_from_hf_logits_match_hf_at_tp1(variant, converted, hf_logits, tokens):
    from megafin.generate.forward import forward_logits
    from megafin.runtime.model_session import load_model, megatron_session

    with megatron_session():
        model, _, vocab = load_model(converted[variant])
        logits = forward_logits(model, tokens, vocab)
    ref = hf_logits[variant]
    assert logits.shape == ref.shape
    diff = (logits - ref).abs().max().item()
    print(f"{variant} tp1 max |logit diff| = {diff:.3g}")
    assert diff < TOL
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors


@pytest.fixture(scope="module")
def parallel_logits(converted, tokens, tmp_path_factory) -> dict[str, torch.Tensor]:
    """One torchrun job of 2 gloo processes: each checkpoint loaded at the layout it was converted for."""
    d = tmp_path_factory.mktemp("parallel")
    saves = {"untied_tp2": d / "saved_untied_tp2", "tied_pp2": d / "saved_tied_pp2"}
    jobs = [parallel_worker.job(name, converted[name], 2 if name.endswith("tp2") else 1,
                                2 if name.endswith("pp2") else 1, saves.get(name))
            for name in ("untied_tp2", "untied_pp2", "tied_tp2", "tied_pp2")]
    out = parallel_worker.launch(2, tokens, d, jobs)
    out.update({f"saved_{name}": path / "checkpoints" / "step_0000000" for name, path in saves.items()})
    return out


@pytest.mark.parametrize("name", ["untied_tp2", "untied_pp2", "tied_tp2", "tied_pp2"])
def test_from_hf_logits_match_hf_at_tp2_and_pp2(name, parallel_logits, hf_logits):
    ref = hf_logits[name.split("_")[0]]
    got = parallel_logits[name]
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    print(f"{name} max |logit diff| = {diff:.3g}")
    assert diff < TOL


@pytest.mark.parametrize("name", ["untied_tp2", "tied_pp2"])
def test_checkpoint_saved_at_tp2_or_pp2_exports_bit_exact(name, parallel_logits, hf_models, tmp_path):
    """A checkpoint saved by 2 ranks at TP=2 (q/k/v groups, [gate; up] and vocab split in chunks) or PP=2 (layers
    split) reads back through the chunk reader into the original HF tensors."""
    from megafin.checkpoint.manager import read_meta
    from megafin.convert.convert import to_hf

    ckpt = parallel_logits[f"saved_{name}"]
    assert read_meta(ckpt)["layout"] == {"tp": 2 if "tp2" in name else 1, "pp": 2 if "pp2" in name else 1, "dp": 1}
    out = to_hf(ckpt, tmp_path / "hf")
    original, exported = read_hf_tensors(hf_models[name.split("_")[0]]), read_hf_tensors(out)
    assert sorted(exported) == sorted(original)
    for key, t in original.items():
        assert torch.equal(exported[key], t), key


def test_sharded_keys_match_the_model(converted):
    """megatron_keys' torch_dist keys, global shapes and _extra_state objects (every adapter's megatron side) are what
    megafin's GPTModel saves (the writer takes them from megatron_keys and never builds the model)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megafin.convert.convert import checkpoint_config
    from megafin.convert.dcp_writer import template_sharded_items
    from megafin.models import megatron_keys
    from megafin.models.gpt import build_model
    from megafin.models.layout import padded_vocab_size
    from megafin.runtime.model_session import megatron_session, model_build_config

    for variant in ("untied", "tied", "qwen2"):
        cfg, vocab = checkpoint_config(converted[variant])
        with megatron_session():
            model = build_model(model_build_config(cfg, 1, 1), vocab)
            sharded = model.sharded_state_dict()
            state = model.state_dict()
        want = megatron_keys.sharded_shapes(cfg.model, padded_vocab_size(vocab, 128))
        got = {v.key: tuple(v.global_shape) for v in sharded.values() if isinstance(v, ShardedTensor)}
        assert {k: v for k, v in want.items() if k in got} == got  # fc1 is a factory: not a ShardedTensor
        assert set(want) - set(got) == {"decoder.layers.mlp.linear_fc1.weight"}
        template_tensors, template_objects = template_sharded_items(cfg)
        assert set(template_tensors) == set(want)
        assert template_objects == megatron_keys.sharded_objects(cfg.model)
        for key in megatron_keys.megatron_keys(cfg.model):
            skey, layer = megatron_keys.sharded_location(key)
            assert sharded[key].key == skey, key
            if isinstance(sharded[key], ShardedTensor):
                global_shape = tuple(sharded[key].global_shape)
                assert (global_shape[1:] if layer is not None else global_shape) == tuple(state[key].shape), key


@pytest.mark.parametrize("variant", ["untied", "tied", "untied_bf16", "qwen2", "qwen2_tied"])
def test_from_hf_then_to_hf_is_bit_exact(variant, converted, hf_models, tmp_path):
    from megafin.convert.convert import to_hf

    out = to_hf(converted[variant], tmp_path / "hf", max_shard_size="60KB")
    original, exported = read_hf_tensors(hf_models[variant]), read_hf_tensors(out)
    assert sorted(exported) == sorted(original)
    for key, t in original.items():
        assert exported[key].dtype == t.dtype, key
        assert torch.equal(exported[key], t), key
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())


def test_export_loads_with_auto_classes(converted, hf_logits, tokens, tmp_path):
    """config.json (GQA, llama3 rope scaling), tokenizer with the chat template: AutoModel/AutoTokenizer load it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megafin.convert.convert import to_hf

    out = to_hf(converted["untied_pp2"], tmp_path / "hf", dtype="fp32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_key_value_heads"] == 2
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["vocab_size"] == 1000
    assert (out / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, hf_logits["untied"])
    tok = AutoTokenizer.from_pretrained(out)
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    assert tok.chat_template == CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "EPS?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>EPS?\n<|assistant|>"


def test_greedy_decoding_matches_hf_generate_on_random_weights(converted, hf_models):
    """The cache-less greedy reference (full forward per token, TP=2-converted checkpoint) produces what HF's
    generate (KV cache) does on the original. Small random weights still repeat themselves, but not a single token."""
    from transformers import AutoModelForCausalLM

    from megafin.runtime.model_session import load_model, megatron_session
    from tests.greedy_reference import greedy_decode

    prompt = [5, 17, 250, 3, 999, 42]
    model = AutoModelForCausalLM.from_pretrained(hf_models["untied"], dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf_new = out[0, len(prompt):].tolist()
    with megatron_session():
        mf, _, vocab = load_model(converted["untied_tp2"])
        mf_new = greedy_decode(mf, prompt, vocab, 10)
    assert hf_new == mf_new
    assert len(set(mf_new)) >= 2, mf_new
