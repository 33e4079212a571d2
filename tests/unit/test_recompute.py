"""model.recompute: activation recomputation through megatron-core's TransformerConfig gives the loss and every
parameter gradient of the same model without it (plain and packed THD batches). Bad recompute and parallel.virtual_pp
settings are one line each (virtual_pp's training runs: tests/distributed/test_parallel_equivalence.py)."""
from __future__ import annotations

import pytest
import torch

from megafin.config import load_config
from tests.helpers import TINY_MODEL, assert_close_to_scale

# Recomputation reruns the same fp32 kernels on the same inputs, so equality is expected to the bit; the bound only
# allows for a backend that picks another kernel for the rerun. Any missing or stale activation moves a gradient by
# O(max|grad|).
REL = 1e-6

SETTINGS = {
    "selective": ["model.recompute=selective"],  # megatron-core's default: core attention
    "selective-mlp": ["model.recompute=selective", "model.recompute_modules=[core_attn, mlp]"],
    "full-uniform": ["model.recompute=full", "model.recompute_method=uniform", "model.recompute_num_layers=1"],
    "full-block": ["model.recompute=full", "model.recompute_method=block", "model.recompute_num_layers=2"],
}
LENS = [5, 17, 10]  # a packed micro-batch of three documents


def _model(overrides: list[str]):
    from megafin.models.gpt import build_model

    cfg = load_config(None, [*TINY_MODEL, "model.num_layers=3", "model.attention_backend=sdpa", "train.seed=5",
                             *overrides])
    return build_model(cfg, vocab_size=100)


def _loss_and_grads(model, packed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from megatron.core.packed_seq_params import PackedSeqParams

    g = torch.Generator().manual_seed(0)
    n = sum(LENS)
    tokens = torch.randint(0, 100, (1, n), generator=g)
    labels = torch.randint(0, 100, (1, n), generator=g)
    if packed:
        cu = torch.tensor([0, *torch.tensor(LENS).cumsum(0).tolist()], dtype=torch.int32)
        positions = torch.cat([torch.arange(k) for k in LENS]).unsqueeze(0)
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(LENS),
                                 max_seqlen_kv=max(LENS))
    else:
        positions, params = torch.arange(n).unsqueeze(0), None
    model.zero_grad(set_to_none=True)
    per_token = model(tokens, positions, None, labels=labels, packed_seq_params=params)
    per_token.sum().backward()
    return per_token.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [False, True], ids=["bshd", "thd"])
def test_recompute_gives_the_loss_and_gradients_of_no_recompute(packed, megatron_world):
    base = _model([])
    assert base.config.recompute_granularity is None
    want_loss, want_grads = _loss_and_grads(base, packed)
    for name, overrides in SETTINGS.items():
        model = _model(overrides)
        config = model.config
        assert config.recompute_granularity == overrides[0].split("=")[1], name  # the setting reached megatron-core
        model.load_state_dict(base.state_dict())  # the same weights (the init does not depend on recompute anyway)
        loss, grads = _loss_and_grads(model, packed)
        assert_close_to_scale(loss, want_loss, REL, f"{name}: per-token loss")
        assert sorted(grads) == sorted(want_grads)
        for key, grad in grads.items():
            assert_close_to_scale(grad, want_grads[key], REL, f"{name}: {key}")


@pytest.mark.parametrize("setting,module,runs", [("full-uniform", "mlp", 2),
                                                 ("selective", "self_attention.core_attention", 2),
                                                 ("selective", "mlp", 1)])
def test_recompute_reruns_what_it_names(setting, module, runs, megatron_world):
    """Not vacuous: what is recomputed runs again in the backward pass, and only that."""
    model = _model(SETTINGS[setting])
    calls = []
    handle = model.decoder.layers[0].get_submodule(module).register_forward_hook(lambda *args: calls.append(1))
    try:
        _loss_and_grads(model, packed=False)
    finally:
        handle.remove()
    assert len(calls) == runs


@pytest.mark.parametrize("overrides,line", [
    (["model.recompute=some"], "model.recompute: expected one of none, selective, full, got 'some'"),
    (["model.recompute=selective", "model.recompute_modules=[core_attn, moe]"],
     "model.recompute_modules: expected a non-empty list of core_attn, mlp, layernorm, got ['core_attn', 'moe']"),
    (["model.recompute=full", "model.recompute_method=all"],
     "model.recompute_method: expected one of uniform, block with model.recompute=full, got 'all'"),
    (["model.recompute=full", "model.recompute_num_layers=3", "parallel.pp=2"],
     "model.recompute_num_layers: expected between 1 and the 2 layers of a pipeline chunk "
     "(model.num_layers/(pp*virtual_pp)) with model.recompute=full, got 3"),
    (["parallel.virtual_pp=0"], "parallel.virtual_pp: expected a positive integer, got 0"),
    (["parallel.virtual_pp=2"],
     "parallel.virtual_pp: expected 1 when parallel.pp=1 (interleaving needs a pipeline), got 2"),
    (["parallel.pp=2", "parallel.virtual_pp=4"],
     "parallel.virtual_pp: expected a divisor of model.num_layers/pp=4/2 (whole layers per model chunk), got 4"),
    (["parallel.pp=2", "parallel.virtual_pp=2", "parallel.global_batch_size=3"],
     "parallel.global_batch_size: expected a multiple of micro_batch_size*dp*pp=1*1*2 with parallel.virtual_pp=2 "
     "(micro-batches per step divisible by pp), got 3"),
    (["parallel.pp=2", "parallel.virtual_pp=2", "stage=dpo"],
     "parallel.virtual_pp: expected 1 for stage dpo (it runs one model chunk per rank), got 2"),
])
def test_bad_recompute_and_virtual_pp_settings_are_one_line_each(overrides, line, tmp_path):
    from megafin.config.errors import ConfigError
    from megafin.config.validate import validate

    cfg = load_config(None, ["model.num_layers=4", f"run_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=2)
    assert line in str(err.value).splitlines()
