"""megafin's stage losses against the references users know, on the same tiny Llama weights and the same tokens:
- DPO (sigmoid), IPO and RPO (rpo_alpha=1) vs TRL's DPOTrainer: loss, chosen/rejected rewards and every gradient;
- SFT vs transformers' causal-LM loss (labels -100 outside the responses).

HF weights go into megafin's GPTModel through the conversion adapter (megafin/convert), gradients come back the
same way, so a wrong fused-QKV/fc1 layout or a shifted mask shows up here."""
from __future__ import annotations

import random

import pytest
import torch

from megafin.config import load_config
from megafin.data.packed import collate_packed
from tests.helpers import assert_close_to_scale

pytest.importorskip("trl", reason="trl is in the test extra (pip install -e .[test]); without it there is no peer")
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


def _hf_model(seed: int):
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


def _adapter_and_config(hf_model):
    from megafin.models.registry import adapter_for_hf_config

    hf_cfg = hf_model.config.to_dict()
    hf_cfg["architectures"] = ["LlamaForCausalLM"]
    adapter = adapter_for_hf_config(hf_cfg, "test")
    return adapter, adapter.model_config(hf_cfg, "test")


def _megafin_model(hf_model, stage_overrides=()):
    """megafin GPTModel holding the HF model's weights (fp32), plus the adapter and its config."""
    from megafin.models.gpt import build_model

    adapter, m = _adapter_and_config(hf_model)
    overrides = [f"model.{k}={v}" for k, v in vars(m).items() if k != "rope_scaling"]
    cfg = load_config(None, [*overrides, "model.rope_scaling.type=none", "model.attention_backend=sdpa",
                             *stage_overrides])
    model = build_model(cfg, VOCAB)
    hf_sd = hf_model.state_dict()
    weights = dict(adapter.to_megatron(m, VOCAB, lambda k: hf_sd[k]))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return model, adapter, m, cfg


def _grads_as_hf(model, adapter, m) -> dict[str, torch.Tensor]:
    grads = {name: p.grad for name, p in model.named_parameters()}
    return dict(adapter.to_hf(m, VOCAB, lambda k: grads[k]))


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append({"prompt_ids": [rng.randrange(5, 900) for _ in range(rng.randint(3, 9))],
                    "chosen_ids": [rng.randrange(5, 900) for _ in range(rng.randint(2, 8))],
                    "rejected_ids": [rng.randrange(5, 900) for _ in range(rng.randint(2, 8))]})
    return out


def _pack(pairs: list[dict]) -> dict:
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


def _trl(policy, ref, pairs, loss_type, loss_weights, tiny_data, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_data / "tokenizer")
    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, loss_type=loss_type, loss_weights=loss_weights,
                     per_device_train_batch_size=len(pairs), report_to=[], use_cpu=True, bf16=False,
                     precompute_ref_log_probs=False, max_length=None)
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=text, processing_class=tok)
    inputs = trainer.data_collator(pairs)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), metrics, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


CASES = [("dpo", ["sigmoid"], None, 3), ("ipo", ["ipo"], None, 3), ("rpo", ["sigmoid", "sft"], [1.0, 1.0], 1)]


@pytest.mark.parametrize("loss,trl_types,trl_weights,n_pairs", CASES, ids=[c[0] for c in CASES])
def test_dpo_family_matches_trl(loss, trl_types, trl_weights, n_pairs, megatron_world, tiny_data, tmp_path):
    """RPO with one pair per batch: TRL's "sft" term is a mean over the batch's chosen tokens, megafin's NLL is
    length-normalized per sequence (the RPO paper); the two agree exactly for one pair."""
    from megafin.train.dpo import DPOStage
    from megafin.train.stages import per_token_loss

    pairs = _pairs(n_pairs, seed=5)
    hf_policy, hf_ref = _hf_model(1), _hf_model(2)
    policy, adapter, m, cfg = _megafin_model(hf_policy, ["stage=dpo", f"dpo.loss={loss}", f"dpo.beta={BETA}",
                                                         "dpo.rpo_alpha=1.0"])
    ref, _, _, _ = _megafin_model(hf_ref)
    trl_loss, trl_metrics, trl_grads = _trl(hf_policy, hf_ref, pairs, trl_types, trl_weights, tiny_data, tmp_path)

    batch = _pack(pairs)
    stage = DPOStage(cfg)
    with torch.no_grad():
        ref_out = per_token_loss(ref, batch)
    loss_sum, count, report = stage.loss(batch, per_token_loss(policy, batch), ref_output=ref_out)
    (loss_sum / count).backward()
    r = report["report"]
    assert count.item() == n_pairs
    assert (loss_sum / count).item() == pytest.approx(trl_loss, rel=SCALAR_REL)
    # A reward is beta x (policy - reference log-prob sums): a small difference of sums ~50, rounded like the sums.
    sums = BETA * max(abs(trl_metrics["logps/chosen"]), abs(trl_metrics["logps/rejected"]))
    assert (r[4] / n_pairs).item() == pytest.approx(trl_metrics["rewards/chosen"], abs=SCALAR_REL * sums)
    assert (r[5] / n_pairs).item() == pytest.approx(trl_metrics["rewards/rejected"], abs=SCALAR_REL * sums)
    assert abs(trl_metrics["rewards/chosen"] - trl_metrics["rewards/rejected"]) > 1e-3  # the models do differ
    ours = _grads_as_hf(policy, adapter, m)
    assert set(ours) == set(trl_grads)
    for name, g in trl_grads.items():
        assert_close_to_scale(ours[name], g, GRAD_REL, name)


def test_sft_loss_matches_transformers_causal_lm(megatron_world):
    from megafin.train.stages import LanguageModelStage, per_token_loss

    hf = _hf_model(3)
    model, adapter, m, cfg = _megafin_model(hf, ["stage=sft"])
    rng = random.Random(9)
    examples = []
    for _ in range(4):
        prompt = [rng.randrange(5, 900) for _ in range(rng.randint(2, 7))]
        answer = [rng.randrange(5, 900) for _ in range(rng.randint(1, 9))]
        examples.append((prompt, answer))
    # transformers: a padded batch, labels -100 on prompt and padding; HF averages over all target tokens.
    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for i, (p, a) in enumerate(examples):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        attn[i, :len(p) + len(a)] = 1
    hf_loss = hf(input_ids=ids, attention_mask=attn, labels=labels).loss
    hf_loss.backward()
    # megafin: the same examples packed into one THD sequence.
    import numpy as np

    sample = {"pack_id": 0, "tokens": np.array([t for p, a in examples for t in p + a]),
              "loss_mask": np.array([x for p, a in examples for x in [0] * len(p) + [1] * len(a)]),
              "doc_lens": np.array([len(p) + len(a) for p, a in examples])}
    batch = collate_packed([sample], seq_length=64, pad_id=0)
    loss_sum, count, _ = LanguageModelStage(cfg).loss(batch, per_token_loss(model, batch))
    (loss_sum / count).backward()
    assert (loss_sum / count).item() == pytest.approx(hf_loss.item(), rel=SCALAR_REL)
    ours = _grads_as_hf(model, adapter, m)
    for name, p in hf.named_parameters():
        assert_close_to_scale(ours[name], p.grad, GRAD_REL, name)
