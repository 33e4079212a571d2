"""optimizer.torch_adamw: the kernel reaches torch's AdamW inside megatron-core's optimizer, and both kernels
compute the same update up to rounding."""
from __future__ import annotations

import pytest
import torch

from megafin.config import ConfigError, load_config, validate
from megafin.train.torch_adamw import select_torch_adamw_kernel


def _megatron_adamw(model: torch.nn.Module) -> object:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    return get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, adam_beta2=0.95,
                                                  clip_grad=1.0), [model])


def _ddp_model(megatron_world: None, seed: int) -> torch.nn.Module:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer import TransformerConfig

    torch.manual_seed(seed)
    inner = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=1)
    return DistributedDataParallel(config=config, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True),
                                   module=inner)


def _train(model: torch.nn.Module, optimizer: object, steps: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        model(torch.randn(4, 16, generator=gen)).square().mean().backward()
        model.finish_grad_sync()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_fused_kernel_is_set_and_matches_the_default_up_to_rounding(megatron_world):
    base_model = _ddp_model(megatron_world, seed=3)
    base_opt = _megatron_adamw(base_model)
    assert select_torch_adamw_kernel(base_opt, "default") == 1
    fused_model = _ddp_model(megatron_world, seed=3)
    fused_opt = _megatron_adamw(fused_model)
    assert select_torch_adamw_kernel(fused_opt, "fused") == 1
    inner = fused_opt.optimizer
    assert all(g["fused"] is True and g["foreach"] is False for g in inner.param_groups)
    base = _train(base_model, base_opt)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused = _train(fused_model, fused_opt)
    assert "aten::_fused_adamw_" in {e.name for e in prof.events()}
    moved = [(b - p0).abs().max().item() for b, p0 in zip(base, _ddp_model(megatron_world, seed=3).parameters())]
    assert min(moved) > 1e-3  # the steps moved every weight, so agreeing below means the same update
    for b, f in zip(base, fused):
        torch.testing.assert_close(f, b, rtol=1e-5, atol=1e-7)


def test_an_unknown_kernel_is_one_config_error():
    cfg = load_config(None, ["optimizer.torch_adamw=foreach"])
    with pytest.raises(ConfigError, match=r"optimizer\.torch_adamw.*default, fused"):
        validate(cfg, 1)
