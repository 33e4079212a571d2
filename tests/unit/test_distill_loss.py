"""Reward distillation (`dpo.loss: distill`) against a float64 reference written here in plain torch: the loss and its
gradients, on hand-made log-probs (the pair loss alone) and on hand-made per-token losses of a packed batch whose
packs carry judge rewards (the stage: sequence sums, chosen/rejected order, rewards lined up with their pairs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

BETA = 0.3


def reference_distill(pc, pr, rc, rr, nc, judge_c, judge_r, beta, alpha):
    """Mean over pairs of (beta * ((pc - rc) - (pr - rr)) - (judge_c - judge_r))^2 + alpha * NLL(chosen) / |chosen|
    (Fisch et al. 2024's L_distill, plus RPO's NLL term)."""
    margin = beta * ((pc - rc) - (pr - rr))
    return ((margin - (judge_c - judge_r)) ** 2 + alpha * (-pc / nc)).mean()


def _cfg(alpha: float):
    from megafin.config import load_config

    return load_config(None, ["stage=dpo", "dpo.loss=distill", f"dpo.beta={BETA}", f"dpo.distill_alpha={alpha}"])


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("judged", [True, False], ids=["judge-rewards", "no-rewards"])
def test_pair_loss_and_gradients_match_the_reference(alpha, judged):
    from megafin.stages.preference.losses import PairLogps, loss_class

    g = torch.Generator().manual_seed(3)
    n = 5
    logps = lambda: -20 * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    pc, pr = logps().requires_grad_(), logps().requires_grad_()
    rc, rr = logps(), logps()
    nc, nr = torch.randint(1, 9, (n,), generator=g).double(), torch.randint(1, 9, (n,), generator=g).double()
    jc, jr = (torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)) \
        if judged else (torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
    loss = loss_class("distill")(_cfg(alpha).dpo)
    out = loss(PairLogps(pc, pr, rc, rr, nc, nr, jc if judged else None, jr if judged else None))
    out.loss.mean().backward()
    got = (pc.grad.clone(), pr.grad.clone())
    pc.grad = pr.grad = None
    want = reference_distill(pc, pr, rc, rr, nc, jc, jr, BETA, alpha)
    want.backward()
    assert out.loss.mean().item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(got[0], pc.grad, rtol=1e-12, atol=0) and torch.allclose(got[1], pr.grad, rtol=1e-12, atol=0)
    assert out.pref.detach().mean().item() == pytest.approx(
        reference_distill(pc, pr, rc, rr, nc, jc, jr, BETA, 0.0).item(), rel=1e-12)
    assert torch.allclose(out.reward_chosen, BETA * (pc - rc).detach(), rtol=1e-12)
    assert torch.allclose(out.reward_rejected, BETA * (pr - rr).detach(), rtol=1e-12)


def _pack(pid: int, doc_lens: list[int], rewards: list[float], rng: np.random.Generator) -> dict:
    """A preference pack of len(doc_lens) // 2 pairs: random tokens, a prompt of 2-3 unmasked tokens per document."""
    mask = np.concatenate([(np.arange(n) >= rng.integers(2, 4)).astype(np.int64) for n in doc_lens])
    return {"pack_id": pid, "tokens": rng.integers(5, 90, sum(doc_lens)), "loss_mask": mask,
            "doc_lens": np.array(doc_lens), "doc_rewards": np.array(rewards, dtype=np.float64)}


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_stage_loss_and_gradients_match_the_reference_on_a_packed_batch(alpha):
    """Two packs (3 and 1 pairs) in one micro-batch with a padding document: per-token losses in, the loss and its
    gradient per token out, as the float64 reference computes them from the same numbers."""
    from megafin.data.packed_collate import collate_packed
    from megafin.stages.preference.stage import PreferenceStage

    rng = np.random.default_rng(0)
    samples = [_pack(4, [6, 7, 5, 8, 9, 6], [0.9, -0.4, 2.5, 1.5, -1.0, 0.25], rng),
               _pack(7, [7, 6], [0.3, 0.8], rng)]
    batch = collate_packed(samples, seq_length=48, pad_id=0)
    assert batch["doc_rewards"].tolist() == [0.9, -0.4, 2.5, 1.5, -1.0, 0.25, 0.3, 0.8]
    T = batch["tokens"].shape[1]
    policy = torch.from_numpy(rng.uniform(0.5, 4.0, (1, T))).float().requires_grad_()
    ref = torch.from_numpy(rng.uniform(0.5, 4.0, (1, T))).float()
    loss_sum, count, _ = PreferenceStage(_cfg(alpha)).loss(batch, policy, ref_output=ref)
    (loss_sum / count).backward()

    # The reference: each document's log-prob is minus the sum of its masked per-token losses, in float64.
    p64 = policy.detach().double().requires_grad_()
    mask, cu = batch["loss_mask"][0].double(), batch["cu_seqlens"].tolist()
    n_docs = batch["num_docs"]
    logp = torch.stack([-(p64[0, a:b] * mask[a:b]).sum() for a, b in zip(cu[:n_docs], cu[1:n_docs + 1])])
    ref_logp = torch.stack([-(ref[0, a:b].double() * mask[a:b]).sum() for a, b in zip(cu[:n_docs], cu[1:n_docs + 1])])
    ntok = torch.stack([mask[a:b].sum() for a, b in zip(cu[:n_docs], cu[1:n_docs + 1])])
    judge = batch["doc_rewards"]
    want = reference_distill(logp[0::2], logp[1::2], ref_logp[0::2], ref_logp[1::2], ntok[0::2], judge[0::2],
                             judge[1::2], BETA, alpha)
    want.backward()
    assert count.item() == 4
    # fp32 sums of ~20 per-token losses of up to 4: rounding ~1e-6 of the log-probs, squared margins of ~10
    assert (loss_sum / count).item() == pytest.approx(want.item(), rel=2e-6)
    from tests.helpers import assert_close_to_scale

    assert_close_to_scale(policy.grad, p64.grad, 2e-6, "d loss / d per-token loss")
    assert p64.grad.abs().max() > 0.1  # the gradient is not trivially zero


def test_without_rewards_in_the_batch_pairs_count_as_one_and_zero():
    from megafin.data.packed_collate import collate_packed
    from megafin.stages.preference.stage import PreferenceStage

    rng = np.random.default_rng(1)
    judged = _pack(0, [6, 7, 5, 8], [1.0, 0.0, 1.0, 0.0], rng)
    plain = {k: v for k, v in judged.items() if k != "doc_rewards"}
    out = torch.from_numpy(rng.uniform(0.5, 4.0, (1, 26))).float()
    ref = torch.from_numpy(rng.uniform(0.5, 4.0, (1, 26))).float()
    stage = PreferenceStage(_cfg(0.0))
    a = stage.loss(collate_packed([judged], 26, 0), out, ref_output=ref)[0]
    b_batch = collate_packed([plain], 26, 0)
    assert "doc_rewards" not in b_batch
    assert stage.loss(b_batch, out, ref_output=ref)[0].item() == a.item()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_distill_alpha_is_checked(value, tmp_path):
    from megafin.config import ConfigError, load_config, validate

    cfg = load_config(None, ["stage=dpo", "dpo.loss=distill", f"dpo.distill_alpha={value}", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg, 1)
    assert f"dpo.distill_alpha: expected a non-negative number, got {float(value)!r}" in err.value.lines
