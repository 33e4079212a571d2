"""SimPO (`dpo.loss: simpo`, reference-free) against TRL's CPO trainer with loss_type="simpo" and cpo_alpha=0 (pure
SimPO), on the same tiny Llama weights and tokens: loss, chosen/rejected rewards and every gradient."""
from __future__ import annotations

import pytest
import torch

from tests.alignment_fixtures import (GRAD_REL, SCALAR_REL, grads_as_hf, hf_model, megafin_model, pack_pairs,
                                      random_pairs)
from tests.helpers import assert_close_to_scale

pytest.importorskip("trl", reason="trl is in the test extra (pip install -e .[test]); without it there is no peer")
BETA, GAMMA = 2.0, 0.5  # SimPO's usual range (the paper: beta 2-2.5, gamma/beta ~0.25)


def _trl_cpo(policy, pairs, tiny_data, tmp_path):
    """TRL computes the loss from the padded chosen/rejected batch its collator would build (labels -100 on the
    prompt and the padding)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_data / "tokenizer")
    args = CPOConfig(output_dir=str(tmp_path), beta=BETA, loss_type="simpo", simpo_gamma=GAMMA, cpo_alpha=0.0,
                     per_device_train_batch_size=len(pairs), report_to=[], use_cpu=True, bf16=False,
                     remove_unused_columns=False)
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = CPOTrainer(model=policy, args=args, train_dataset=text, processing_class=tok)
    batch = {}
    for side in ("chosen", "rejected"):
        seqs = [p["prompt_ids"] + p[f"{side}_ids"] for p in pairs]
        width = max(map(len, seqs))
        ids = torch.zeros(len(pairs), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, seq) in enumerate(zip(pairs, seqs)):
            ids[i, :len(seq)] = torch.tensor(seq)
            attention[i, :len(seq)] = 1
            labels[i, len(p["prompt_ids"]):len(seq)] = torch.tensor(p[f"{side}_ids"])
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": attention, f"{side}_labels": labels})
    trainer.model.train()
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    loss.backward()
    return loss.item(), metrics, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_simpo_matches_trl_cpo(megatron_world, tiny_data, tmp_path):
    from megafin.stages.base import per_token_loss
    from megafin.stages.preference.stage import PreferenceStage

    pairs = random_pairs(3, seed=5)
    hf_policy = hf_model(1)
    policy, adapter, m, cfg = megafin_model(hf_policy, ["stage=dpo", "dpo.loss=simpo", f"dpo.beta={BETA}",
                                                        f"dpo.simpo_gamma={GAMMA}"])
    trl_loss, trl_metrics, trl_grads = _trl_cpo(hf_policy, pairs, tiny_data, tmp_path)

    batch = pack_pairs(pairs)
    stage = PreferenceStage(cfg)
    assert not stage.uses_reference  # no reference model, no reference pass
    loss_sum, count, report = stage.loss(batch, per_token_loss(policy, batch))
    (loss_sum / count).backward()
    r = report["report"]
    assert count.item() == len(pairs)
    assert (loss_sum / count).item() == pytest.approx(trl_loss, rel=SCALAR_REL)
    # Rewards are beta x per-token average log-probs: rounded like those averages.
    scale = BETA * max(abs(trl_metrics["logps/chosen"]), abs(trl_metrics["logps/rejected"]))
    assert (r[4] / len(pairs)).item() == pytest.approx(trl_metrics["rewards/chosen"], abs=SCALAR_REL * scale)
    assert (r[5] / len(pairs)).item() == pytest.approx(trl_metrics["rewards/rejected"], abs=SCALAR_REL * scale)
    assert abs(trl_metrics["rewards/chosen"] - trl_metrics["rewards/rejected"]) > 1e-3  # the responses do differ
    ours = grads_as_hf(policy, adapter, m)
    assert set(ours) == set(trl_grads)
    for name, g in trl_grads.items():
        assert_close_to_scale(ours[name], g, GRAD_REL, name)


def test_simpo_gamma_is_checked(tmp_path):
    from megafin.config import ConfigError, load_config, validate

    cfg = load_config(None, ["stage=dpo", "dpo.loss=simpo", "dpo.simpo_gamma=-1", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, 1)
    assert "dpo.simpo_gamma: expected a non-negative number, got -1.0" in err.value.lines

