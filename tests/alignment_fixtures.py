"""Shared by the alignment parity tests (tests/unit/test_alignment_parity.py, test_simpo_parity.py): tiny Llama
weights in HF and in megafin's GPTModel (through the conversion adapter), random preference pairs, and their pack."""
from __future__ import annotations

import random

import torch

from megafin.config import load_config
from megafin.data.packed_collate import collate_packed

VOCAB = 1024
# Tolerances, relative to the magnitude the fp32 rounding scales with: the two sides sum the same log-probs in
# another order (HF's padded batch vs megafin's packed THD), and another CPU's kernels (AVX2, AVX-512, scalar)
# reorder them again. Measured across those kernels: losses and rewards drift by <= 3e-7 of that magnitude (IPO's
# loss ~44 by 2.6e-7 under AVX2), gradients by <= 1e-6 of their tensor's largest entry. The bounds leave 10x on
# that and stay far below a real mistake: a 1e-3 change of the math, a wrong beta (IPO's target 1/(2 beta) moves
# its loss by >10%) or a mask shifted by one token (a whole log-prob, ~1e-1 of the sums).
SCALAR_REL = 5e-6
GRAD_REL = 1e-5
BETA = 0.1


def hf_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():  # larger weights than HF's init, so log-probs differ visibly between models and tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def adapter_and_config(hf_model):
    from megafin.models.registry import adapter_for_hf_config

    hf_cfg = hf_model.config.to_dict()
    hf_cfg["architectures"] = ["LlamaForCausalLM"]
    adapter = adapter_for_hf_config(hf_cfg, "test")
    return adapter, adapter.model_config(hf_cfg, "test")


def megafin_model(hf_model, stage_overrides=()):
    """megafin GPTModel holding the HF model's weights (fp32), plus the adapter and its config."""
    from megafin.models.gpt import build_model

    adapter, m = adapter_and_config(hf_model)
    from dataclasses import is_dataclass

    # Flat fields only: nested sections (rope_scaling, fusions) keep their defaults.
    overrides = [f"model.{k}={v}" for k, v in vars(m).items() if not is_dataclass(v)]
    cfg = load_config(None, [*overrides, "model.rope_scaling.type=none", "model.attention_backend=sdpa",
                             *stage_overrides])
    model = build_model(cfg, VOCAB)
    hf_sd = hf_model.state_dict()
    weights = dict(adapter.to_megatron(m, VOCAB, lambda k: hf_sd[k]))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return model, adapter, m, cfg


def grads_as_hf(model, adapter, m) -> dict[str, torch.Tensor]:
    grads = {name: p.grad for name, p in model.named_parameters()}
    return dict(adapter.to_hf(m, VOCAB, lambda k: grads[k]))


def random_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append({"prompt_ids": [rng.randrange(5, 900) for _ in range(rng.randint(3, 9))],
                    "chosen_ids": [rng.randrange(5, 900) for _ in range(rng.randint(2, 8))],
                    "rejected_ids": [rng.randrange(5, 900) for _ in range(rng.randint(2, 8))]})
    return out


def pack_pairs(pairs: list[dict]) -> dict:
    """All pairs in one pack, as data_prep preference writes them (chosen, rejected adjacent)."""
    tokens, mask, lens = [], [], []
    for p in pairs:
        for resp in (p["chosen_ids"], p["rejected_ids"]):
            tokens += p["prompt_ids"] + resp
            mask += [0] * len(p["prompt_ids"]) + [1] * len(resp)
            lens.append(len(p["prompt_ids"]) + len(resp))
    import numpy as np

    sample = {"pack_id": 0, "tokens": np.array(tokens), "loss_mask": np.array(mask), "doc_lens": np.array(lens)}
    return collate_packed([sample], seq_length=len(tokens) + 3, pad_id=0)
