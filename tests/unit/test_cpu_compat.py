"""The CPU compatibility layer: each mechanism, each patched site, and that it never activates with CUDA.

Where each patched path is exercised end to end:
- RoPE/attention/embedding allocations on `torch.cuda.current_device()`: every training test (model forward).
- `device="cuda"` literals in schedules (no-pipelining and 1F1B): test_parallel_equivalence (single, pp2).
- p2p_communication `torch.cuda.synchronize`: test_parallel_equivalence[pp2].
- optimizer/clip_grads literals and `param.type()` checks: every training test (clip_grad=1.0); bf16
  (Float16OptimizerWithFloat16Params) and DistributedOptimizer (`.cuda()` in get_parameter_state_dp_zero):
  test_resume_is_bit_exact_for_distributed_optimizer_and_bf16.
- RNG tracker (`_set_cuda_rng_state`, `torch.cuda.get_rng_state`): here, and every run via model_parallel seed.
- LanguageModule.setup_embeddings_and_output_layer (`.cuda()` when tied embeddings span pipeline stages):
  test_parallel_equivalence[cpt-pp2-tied].
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from megafin.runtime import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inactive on CUDA machines")


@pytest.fixture(scope="module", autouse=True)
def applied():
    assert cpu_compat.apply() is True
    assert cpu_compat.apply() is True  # idempotent
    assert cpu_compat.is_active()


def test_megatron_modules_see_cpu_torch_and_others_do_not():
    from megatron.core.models.common.embeddings import rotary_pos_embedding
    from megatron.core.pipeline_parallel import schedules

    for module in (schedules, rotary_pos_embedding):
        assert isinstance(module.torch, cpu_compat.CudaToCpuTorch)
    assert torch.zeros(1).device.type == "cpu" and sys.modules["torch"] is torch  # real torch untouched
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")


def test_factories_map_cuda_devices_and_drop_pinning():
    t = cpu_compat.CudaToCpuTorch()
    for device in ("cuda", "cuda:0", 0, torch.device("cuda")):
        assert t.zeros(2, device=device).device.type == "cpu"
    assert t.tensor([1, 2], device="cuda", pin_memory=True).tolist() == [1, 2]
    assert t.arange(3, device="cuda").tolist() == [0, 1, 2]
    assert t.Tensor is torch.Tensor and t.float32 is torch.float32  # everything else passes through


def test_cuda_shim():
    shim = cpu_compat.CudaToCpuTorch().cuda
    assert shim.current_device() == torch.device("cpu") and not shim.is_available()
    assert shim.synchronize() is None and shim.device_count() == 0
    with shim.nvtx.range("x"):
        shim.nvtx.range_push("y")
        shim.nvtx.range_pop()
    assert isinstance(torch.zeros(1), shim.FloatTensor)
    state = shim.get_rng_state()
    a = torch.rand(3)
    shim.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_rng_tracker_forks_a_separate_reproducible_stream():
    from megatron.core.tensor_parallel import random as tp_random

    assert tp_random._set_cuda_rng_state is cpu_compat._set_cpu_rng_state
    tracker = tp_random.CudaRNGStatesTracker()
    tracker.add("stream", 42)
    torch.manual_seed(0)
    with tracker.fork("stream"):
        first = torch.rand(4)
    outside = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(4), outside)  # the fork restored the default stream
    tracker2 = tp_random.CudaRNGStatesTracker()
    tracker2.add("stream", 42)
    with tracker2.fork("stream"):
        assert torch.equal(torch.rand(4), first)  # same seed, same stream


def test_tensor_method_context_is_scoped():
    x = torch.zeros(2)
    with cpu_compat.cpu_tensor_methods():
        assert x.type() == "torch.cuda.FloatTensor"
        assert x.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert x.cuda() is x
        assert x.type(torch.float64).dtype == torch.float64  # conversions still work
    assert x.type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        x.cuda()


def test_wrapped_megatron_methods():
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    for fn in (LanguageModule.setup_embeddings_and_output_layer,distrib_optimizer.DistributedOptimizer.__init__,
               distrib_optimizer.DistributedOptimizer.get_parameter_state_dp_zero,
               optimizer.Float16OptimizerWithFloat16Params.__init__,
               clip_grads.clip_grad_by_total_norm_fp32):
        assert getattr(fn, "__megafin_cpu_compat__", False), fn


def test_clip_grads_runs_on_cpu_params():
    from megatron.core.optimizer import clip_grads

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    clip_grads.clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-5)


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_modules_imported_later_are_patched():
    out = _run("""
        import sys
        from megafin.runtime import cpu_compat
        cpu_compat.apply()
        name = "megatron.core.energy_monitor"
        assert name not in sys.modules
        import importlib
        mod = importlib.import_module(name)
        print(type(mod.torch).__name__)
    """)
    assert out == "CudaToCpuTorch"


def test_never_active_when_cuda_is_present():
    out = _run("""
        import torch
        torch.cuda.is_available = lambda: True
        from megafin.runtime import cpu_compat
        from megatron.core.pipeline_parallel import schedules
        print(cpu_compat.apply(), cpu_compat.is_active(), schedules.torch is torch)
    """)
    assert out == "False False True"
