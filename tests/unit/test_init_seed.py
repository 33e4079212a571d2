"""Every device starts a run from the same weights: init_distributed seeds the CPU generator, on which megafin draws
every weight (use_cpu_initialization), itself. megatron-core's seeding reaches it only through the CPU shim; on a GPU
it seeds CUDA's generator alone, so GPU runs of one config used to start from different embeddings."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist


def test_cpu_generator_is_seeded_where_megatron_seeds_only_cuda(monkeypatch):
    import megatron.core.tensor_parallel as tensor_parallel

    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed

    if dist.is_initialized():
        pytest.skip("a process group from another test is still up in this process")
    real = tensor_parallel.model_parallel_cuda_manual_seed

    def cuda_only(*args, **kwargs):  # what it does on a GPU: the CPU generator's state is left as it was
        state = torch.get_rng_state()
        real(*args, **kwargs)
        torch.set_rng_state(state)

    monkeypatch.setattr(tensor_parallel, "model_parallel_cuda_manual_seed", cuda_only)
    draws = []
    for noise in (1, 1000):  # whatever drew from the generator before must not matter
        torch.rand(noise)
        init_distributed(detect_launch_env(), tp=1, pp=1, seed=1234)
        try:
            draws.append(torch.rand(4))
        finally:
            shutdown_distributed()
    torch.manual_seed(1234)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], torch.rand(4))
