"""megafin's stage losses against the references users know, on the same tiny Llama weights and the same tokens:
- DPO (sigmoid), IPO and RPO (rpo_alpha=1) vs TRL's DPOTrainer: loss, chosen/rejected rewards and every gradient;
- SFT vs transformers' causal-LM loss (labels -100 outside the responses).

HF weights go into megafin's GPTModel through the conversion adapter (megafin/convert), gradients come back the
same way, so a wrong fused-QKV/fc1 layout or a shifted mask shows up here."""
from __future__ import annotations

import random

import pytest
import torch

from megafin.data.packed_collate import collate_packed
from tests.helpers import assert_close_to_scale

pytest.importorskip("trl", reason="trl is in the test extra (pip install -e .[test]); without it there is no peer")
from tests.alignment_fixtures import (BETA, GRAD_REL, SCALAR_REL, grads_as_hf, hf_model, megafin_model, pack_pairs,
                                      random_pairs)


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
    from megafin.stages.preference.stage import PreferenceStage
    from megafin.stages.base import per_token_loss

    pairs = random_pairs(n_pairs, seed=5)
    hf_policy, hf_ref = hf_model(1), hf_model(2)
    policy, adapter, m, cfg = megafin_model(hf_policy, ["stage=dpo", f"dpo.loss={loss}", f"dpo.beta={BETA}",
                                                         "dpo.rpo_alpha=1.0"])
    ref, _, _, _ = megafin_model(hf_ref)
    trl_loss, trl_metrics, trl_grads = _trl(hf_policy, hf_ref, pairs, trl_types, trl_weights, tiny_data, tmp_path)

    batch = pack_pairs(pairs)
    stage = PreferenceStage(cfg)
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
    ours = grads_as_hf(policy, adapter, m)
    assert set(ours) == set(trl_grads)
    for name, g in trl_grads.items():
        assert_close_to_scale(ours[name], g, GRAD_REL, name)


def test_sft_loss_matches_transformers_causal_lm(megatron_world):
    from megafin.stages.base import per_token_loss
    from megafin.stages.language_model import LanguageModelStage

    hf = hf_model(3)
    model, adapter, m, cfg = megafin_model(hf, ["stage=sft"])
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
    ours = grads_as_hf(model, adapter, m)
    for name, p in hf.named_parameters():
        assert_close_to_scale(ours[name], p.grad, GRAD_REL, name)
