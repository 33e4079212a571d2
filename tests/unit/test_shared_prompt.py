"""dpo.share_prompt: a preference pair's prompt is computed once, and the rejected response attends to the chosen
document's copy of it at its true positions. Per-sequence log-probs and gradients must equal those of the two
documents computed whole."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megafin.config import load_config
from megafin.data.packed_collate import collate_packed, shared_prompt_length
from tests.helpers import TINY_MODEL, assert_close_to_scale


def _pair_pack(rng: np.random.Generator, pairs: list[tuple[int, int, int]], differ: int = -1) -> dict:
    """A pack of pairs (prompt, chosen, rejected lengths): prompt tokens then response tokens, loss on responses.
    Pair `differ` gets different prompts, so it must not be shared."""
    tokens, mask, lens = [], [], []
    for k, (p, c, r) in enumerate(pairs):
        prompt = rng.integers(3, 200, p)
        other = rng.integers(3, 200, p) if k == differ else prompt
        for pr, n in ((prompt, c), (other, r)):
            tokens += [*pr, *rng.integers(3, 200, n)]
            mask += [0] * p + [1] * n
            lens.append(p + n)
    return {"pack_id": 0, "tokens": np.array(tokens), "loss_mask": np.array(mask), "doc_lens": np.array(lens)}


def test_shared_prompt_length():
    a, b = np.array([5, 6, 7, 8, 9]), np.array([5, 6, 7, 1, 2])
    assert shared_prompt_length(a, np.array([0, 0, 0, 1, 1]), b, np.array([0, 0, 0, 1, 1])) == 3
    assert shared_prompt_length(a, np.array([0, 0, 1, 1, 1]), b, np.array([0, 0, 0, 1, 1])) == 2  # response starts
    assert shared_prompt_length(a, np.array([0, 0, 0, 1, 1]), np.array([4, 6, 7, 1, 2]),
                                np.array([0, 0, 0, 1, 1])) == 0


def test_collate_keeps_one_prompt_per_pair():
    rng = np.random.default_rng(0)
    sample = _pair_pack(rng, [(6, 2, 3), (4, 3, 1)], differ=1)
    whole = collate_packed([sample], seq_length=64, pad_id=0, fixed_length=False)
    shared = collate_packed([sample], seq_length=64, pad_id=0, fixed_length=False, share_prompt=True)
    assert whole["tokens"].size(1) == 6 * 2 + 2 + 3 + 4 * 2 + 3 + 1
    assert shared["tokens"].size(1) == whole["tokens"].size(1) - 5  # pair 0 drops 5 of its 6 prompt tokens
    assert shared["attn_prefix"] == [0, 5, 0, 0]
    rejected = slice(int(shared["cu_seqlens"][1]), int(shared["cu_seqlens"][2]))
    assert shared["position_ids"][0, rejected].tolist() == [5, 6, 7, 8]  # continues after the prompt
    assert shared["loss_mask"].sum() == whole["loss_mask"].sum()  # every target is still predicted once


@pytest.mark.parametrize("rope", ["none", "llama3"])
def test_shared_prompt_log_probs_and_gradients_equal_whole_documents(rope, megatron_world):
    from megafin.models.gpt import build_model
    from megafin.stages.base import per_token_loss, sequence_sums

    overrides = [*TINY_MODEL, "model.attention_backend=sdpa", "train.seed=3", f"model.rope_scaling.type={rope}"]
    if rope == "llama3":
        overrides += ["model.rope_scaling.original_max_position_embeddings=16"]
    cfg = load_config(None, overrides)
    rng = np.random.default_rng(1)
    sample = _pair_pack(rng, [(9, 3, 5), (12, 1, 2), (5, 4, 4), (7, 2, 6)], differ=2)
    models = [build_model(cfg, vocab_size=200) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    logps = []
    for model, share in zip(models, (False, True)):
        batch = collate_packed([sample], seq_length=128, pad_id=0, fixed_length=share, share_prompt=share)
        out = per_token_loss(model, batch)
        mask = batch["loss_mask"].reshape(-1)
        logp = sequence_sums(-out.reshape(-1) * mask, batch["cu_seqlens"], batch["num_docs"])
        (logp * torch.arange(1, logp.numel() + 1)).sum().backward()  # a different weight per sequence
        logps.append(logp.detach())
    torch.testing.assert_close(logps[1], logps[0], rtol=1e-5, atol=1e-5)
    for (name, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
        # fp32 rounding of the tensor's scale (<= 3e-7 of max|grad| measured across AVX-512/AVX2/scalar kernels)
        assert_close_to_scale(q.grad, p.grad, 1e-5, name)


@pytest.mark.parametrize("overrides,message", [
    (["model.attention_backend=local"], "dpo.share_prompt: expected false unless model.attention_backend is sdpa"),
    (["model.loss_positions=all", "model.logprob_backend=megatron"],
     "dpo.share_prompt: expected false with model.loss_positions=all"),
])
def test_share_prompt_needs_sdpa_and_the_log_prob_model(overrides, message, tiny_data):
    from megafin.config import ConfigError, validate
    from tests.helpers import REPO

    cfg = load_config(REPO / "recipes/tiny/dpo.yaml", [
        f"data.tokenizer={tiny_data / 'tokenizer'}", f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]",
        "dpo.share_prompt=true", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world_size=1)
    cfg = load_config(REPO / "recipes/tiny/dpo.yaml", [
        f"data.tokenizer={tiny_data / 'tokenizer'}", f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]",
        "dpo.share_prompt=true"])
    validate(cfg, world_size=1)  # the CPU defaults are fine
