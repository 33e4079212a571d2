"""shutdown_distributed ends the default process group only when init_distributed started it: a group made by the
caller (a script running megafin inside its own torch.distributed job, tests/train_batch_worker.py) outlives the run,
and the next run joins it."""
from __future__ import annotations

import pytest
import torch.distributed as dist


def test_a_group_megafin_started_ends_and_one_the_caller_made_stays():
    from megatron.core import parallel_state as ps

    from megafin.runtime.distributed import detect_launch_env, init_distributed, shutdown_distributed

    if dist.is_initialized():
        pytest.skip("a process group from another test is still up in this process")
    init_distributed(detect_launch_env(), tp=1, pp=1, seed=1)
    shutdown_distributed()
    assert not dist.is_initialized() and not ps.model_parallel_is_initialized()

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        group = dist.group.WORLD
        for _ in range(2):  # two runs in a row meet the caller's group
            init_distributed(detect_launch_env(), tp=1, pp=1, seed=1)
            assert dist.group.WORLD is group and ps.model_parallel_is_initialized()
            shutdown_distributed()
            assert dist.is_initialized() and dist.group.WORLD is group
            assert not ps.model_parallel_is_initialized()
    finally:
        dist.destroy_process_group()
