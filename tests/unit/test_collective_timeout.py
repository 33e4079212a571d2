"""train.collective_timeout_s bounds every process group's collectives, megatron's own groups included (they used to
keep megatron's 30-minute default whatever the default group was given, so a survivor waiting on a hung peer in a
data-parallel gradient reduction waited half an hour)."""
from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist


def test_every_process_group_takes_the_collective_timeout():
    from megatron.core import parallel_state as ps

    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed

    if dist.is_initialized():
        pytest.skip("a process group from another test is still up in this process")
    init_distributed(detect_launch_env(), tp=1, pp=1, seed=1, collective_timeout_s=42.5)
    try:
        groups = {"default": dist.group.WORLD, "data-parallel": ps.get_data_parallel_group(),
                  "tensor-parallel": ps.get_tensor_model_parallel_group(),
                  "pipeline-parallel": ps.get_pipeline_model_parallel_group(),
                  "model-parallel": ps.get_model_parallel_group(), "embedding": ps.get_embedding_group()}
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        timeouts = {name: group._get_backend(device).options._timeout for name, group in groups.items()}
        assert timeouts == {name: datetime.timedelta(seconds=42.5) for name in groups}
    finally:
        shutdown_distributed()
