"""The training loss path of megafin's GPTModel: model.logprob_backend=triton (the packed log-prob kernel, under
TRITON_INTERPRET=1 on CPU) gives the same per-token losses and gradients as megatron's vocab-parallel cross entropy,
on a packed batch; model.loss_positions=targets (logits only where the loss mask is set) gives the same losses and
gradients as computing every position; inference still returns logits; checkpoints keep the same keys."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megafin.config import load_config
from megafin.data.packed_collate import collate_packed
from tests.helpers import TINY_MODEL, assert_close_to_scale, to_model_device

# Gradients: the two paths differ in GEMM shapes and reduction order, so they agree to fp32 rounding of the
# tensor's scale (<= 4e-7 of max|grad| measured under AVX-512, AVX2 and scalar kernels); 1e-5 leaves 25x, and a
# wrong label shift, gathered position or missing tied-embedding gradient moves them by O(max|grad|).
GRAD_REL = 1e-5


def _model(backend: str, tie: bool, positions: str = "targets"):
    from megafin.models.gpt import build_model

    cfg = load_config(None, [*TINY_MODEL, f"model.logprob_backend={backend}", f"model.tie_embeddings={str(tie).lower()}",
                             f"model.loss_positions={positions}", "model.attention_backend=sdpa", "train.seed=5"])
    return build_model(cfg, vocab_size=200)  # padded to 256: labels never touch the padding rows


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_kernel_loss_and_gradients_equal_megatron_cross_entropy(tie, megatron_world):
    pytest.importorskip("triton")
    from megafin.stages.base import per_token_loss

    lens = [5, 17, 9]
    rng = np.random.default_rng(0)
    sample = {"pack_id": 0, "tokens": rng.integers(0, 200, sum(lens)), "loss_mask": np.ones(sum(lens), dtype=int),
              "doc_lens": np.array(lens)}
    batch = collate_packed([sample], seq_length=40, pad_id=0)
    ref, fused = _model("megatron", tie), _model("triton", tie)
    batch = to_model_device(batch, ref)
    fused.load_state_dict(ref.state_dict())
    assert set(ref.state_dict()) == set(fused.state_dict())  # same checkpoint keys
    a, b = per_token_loss(ref, batch), per_token_loss(fused, batch)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    (a * batch["loss_mask"]).sum().backward()
    (b * batch["loss_mask"]).sum().backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), fused.named_parameters()):
        assert_close_to_scale(q.grad, p.grad, GRAD_REL, name)
    with torch.no_grad():  # no labels: ordinary logits, as before
        tokens, pos = batch["tokens"][:, :8], batch["position_ids"][:, :8]
        torch.testing.assert_close(fused(tokens, pos, None), ref(tokens, pos, None))


def _partly_masked_batch(lens: list[int], mask_from: list[int]) -> dict:
    """A packed batch whose loss covers only the tail of each document (as responses after a prompt)."""
    rng = np.random.default_rng(1)
    mask = np.concatenate([(np.arange(n) >= m).astype(int) for n, m in zip(lens, mask_from)])
    sample = {"pack_id": 0, "tokens": rng.integers(0, 200, sum(lens)), "loss_mask": mask, "doc_lens": np.array(lens)}
    return collate_packed([sample], seq_length=48, pad_id=0)


@pytest.mark.parametrize("backend", ["megatron", "triton"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_targets_only_equals_every_position(backend, tie, megatron_world):
    """Logits only at loss positions: the same per-token losses there, zero elsewhere, the same gradients."""
    if backend == "triton":
        pytest.importorskip("triton")
    from megafin.stages.base import per_token_loss

    full, targets = _model(backend, tie, "all"), _model(backend, tie, "targets")
    batch = to_model_device(_partly_masked_batch([9, 17, 12], [6, 15, 12]), full)  # the third document: no target
    mask = batch["loss_mask"].float()
    assert 0 < mask.sum() < mask.numel()
    targets.load_state_dict(full.state_dict())
    a, b = per_token_loss(full, batch), per_token_loss(targets, batch)
    torch.testing.assert_close(b * mask, a * mask, rtol=1e-6, atol=1e-6)
    assert torch.all(b[mask == 0] == 0)
    (a * mask).sum().backward()
    (b * mask).sum().backward()
    for (name, p), (_, q) in zip(full.named_parameters(), targets.named_parameters()):
        assert_close_to_scale(q.grad, p.grad, GRAD_REL, name)


def test_targets_only_with_an_empty_mask_still_backpropagates(megatron_world):
    """A micro-batch without targets (e.g. a filler pack) gives zero loss and zero gradients, not an error."""
    from megafin.stages.base import per_token_loss

    model = _model("megatron", False)
    batch = to_model_device(_partly_masked_batch([20, 20], [20, 20]), model)
    assert batch["loss_mask"].sum() == 0
    out = per_token_loss(model, batch)
    (out * batch["loss_mask"]).sum().backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
