"""model.logprob_backend=triton (the packed log-prob kernel, under TRITON_INTERPRET=1 on CPU) gives the same
per-token losses and gradients as megatron's vocab-parallel cross entropy, on a packed batch; inference still
returns logits; checkpoints keep the same keys."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megafin.config import load_config
from megafin.data.packed import collate_packed
from tests.helpers import TINY_MODEL

pytest.importorskip("triton")


def _model(backend: str, tie: bool):
    from megafin.model import build_model

    cfg = load_config(None, [*TINY_MODEL, f"model.logprob_backend={backend}", f"model.tie_embeddings={str(tie).lower()}",
                             "model.attention_backend=sdpa", "train.seed=5"])
    return build_model(cfg, vocab_size=200)  # padded to 256: labels never touch the padding rows


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_kernel_loss_and_gradients_equal_megatron_cross_entropy(tie, megatron_world):
    from megafin.train.stages import per_token_loss

    lens = [5, 17, 9]
    rng = np.random.default_rng(0)
    sample = {"pack_id": 0, "tokens": rng.integers(0, 200, sum(lens)), "loss_mask": np.ones(sum(lens), dtype=int),
              "doc_lens": np.array(lens)}
    batch = collate_packed([sample], seq_length=40, pad_id=0)
    ref, fused = _model("megatron", tie), _model("triton", tie)
    fused.load_state_dict(ref.state_dict())
    assert set(ref.state_dict()) == set(fused.state_dict())  # same checkpoint keys
    a, b = per_token_loss(ref, batch), per_token_loss(fused, batch)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    (a * batch["loss_mask"]).sum().backward()
    (b * batch["loss_mask"]).sum().backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # no labels: ordinary logits, as before
        tokens, pos = batch["tokens"][:, :8], batch["position_ids"][:, :8]
        torch.testing.assert_close(fused(tokens, pos, None), ref(tokens, pos, None))
