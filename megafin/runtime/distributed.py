"""One launcher path: a single process, torchrun, or Slurm's srun all end here with the same process groups."""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megafin.runtime.parent_watch import stop_when_orphaned


# Whether init_distributed started the default process group (and so shutdown_distributed ends it).
_STARTED_DEFAULT_GROUP = False


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # single | torchrun | srun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30)
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0]


def detect_launch_env() -> LaunchEnv:
    """Read rank and world from torchrun's variables, else Slurm's, else run as a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        # srun starts one task per GPU (or per CPU slot): the job id gives every task the same port.
        port = int(env.get("MASTER_PORT", 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         env.get("MASTER_ADDR") or _first_slurm_host(), port, "srun")
    return LaunchEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def init_distributed(launch: LaunchEnv, tp: int, pp: int, seed: int,
                     collective_timeout_s: float = 1800.0, virtual_pp: int = 1, cp: int = 1) -> torch.device:
    """Start the default process group (NCCL on GPU, gloo on CPU), megatron's parallel state and RNG tracker.

    `collective_timeout_s` bounds every collective on every group (megatron's TP/PP/DP groups included: they take
    their own timeout, 30 min by default), so a rank whose peer died or hangs fails instead of waiting for ever."""
    from megafin.runtime import cpu_compat

    cpu_compat.apply()  # no-op with CUDA; must precede any megatron model/optimizer construction
    stop_when_orphaned()  # under torchrun: a rank whose agent died checkpoints and exits instead of running on
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    else:
        device = torch.device("cpu")
    global _STARTED_DEFAULT_GROUP
    if not dist.is_initialized():
        _STARTED_DEFAULT_GROUP = True
        # A world of one needs no rendezvous: an in-memory store, so no port can be taken by another process between
        # choosing it and binding it (a TCP store on a "free" port raced other tests' runs).
        rendezvous = {"store": dist.HashStore()} if launch.world_size == 1 else \
            {"init_method": f"tcp://{launch.master_addr}:{launch.master_port}"}
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(seconds=collective_timeout_s),
            **rendezvous,
        )
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             context_parallel_size=cp,
                                             virtual_pipeline_model_parallel_size=(virtual_pp if virtual_pp > 1
                                                                                   else None),
                                             distributed_timeout_minutes=collective_timeout_s / 60)
    # The CPU generator too, as Megatron-LM's _set_random_seed does: weights are drawn on the CPU on every device
    # (use_cpu_initialization), and megatron's seeding touches only CUDA's generator where CUDA is real. Without
    # this a GPU run's embedding came from whatever state the CPU generator was left in: GPU runs of one config
    # started from different weights (found by bench/gpu_check.py's stages part) and none from the CPU's.
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return device


def collective_device() -> torch.device:
    """Where a tensor must live for a collective on the default group: NCCL reduces CUDA tensors only (a CPU tensor
    fails with "No backend type associated with device type cpu"), gloo CPU tensors."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown_distributed() -> None:
    """End megatron's parallel state, and the default process group if init_distributed started it: a group the caller
    made (a script that runs megafin in its own torch.distributed job) is the caller's to end."""
    global _STARTED_DEFAULT_GROUP
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized() and _STARTED_DEFAULT_GROUP:
        dist.destroy_process_group()
    _STARTED_DEFAULT_GROUP = False
