"""megatron-core on a machine without CUDA: the ONLY place megafin patches megatron-core or torch.

megatron-core 0.16 assumes CUDA everywhere (see ../shared/notes/megatron-core-on-cpu.md): ~175 allocations on
`torch.cuda.current_device()`, literal `device="cuda"` tensors, CUDA RNG state in the model-parallel RNG tracker,
`torch.cuda.synchronize()`, and parameter dtype checks through the string `param.type()`.

Three mechanisms, each undoing one kind of assumption and nothing else:
1. `CudaToCpuTorch`: inside megatron.core's own modules the global name `torch` is replaced by a view of torch in
   which "cuda" means "cpu": factory functions map a CUDA device to the CPU (and drop pin_memory), and
   `torch.cuda` is `CpuCudaShim` (current_device -> cpu, synchronize -> no-op, RNG calls -> the CPU generator,
   nvtx -> no-op). Everything else passes through to the real torch.
2. `_set_cuda_rng_state` in the RNG tracker sets the CPU generator's state.
3. The few methods that check `param.type() == 'torch.cuda.FloatTensor'` or call `tensor.cuda()` see CUDA type
   names for CPU tensors, and `.cuda()` as the identity, while they run (`cpu_tensor_methods`).

`apply()` is called once by megafin.runtime.distributed before any model or optimizer is built, and does nothing
when CUDA is available: on a GPU none of this is active.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import sys
import types
from typing import Any, Callable, Iterator

import torch

from megafin.runtime.import_hooks import AfterImport

logger = logging.getLogger(__name__)

# Modules whose code paths megafin runs. They are imported before patching so their `torch` global is replaced;
# megatron.core modules imported later are patched by the import hook.
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.tensor_parallel.data",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.embeddings.rope_utils",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.mlp",
    "megatron.core.transformer.utils",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.dist_checkpointing.serialization",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.datasets.blended_megatron_dataset_builder",
    "megatron.core.datasets.gpt_dataset",
)

_FACTORIES = (
    "empty", "zeros", "ones", "full", "tensor", "arange", "rand", "randn", "randint", "empty_strided",
    "as_tensor", "linspace", "eye",
)

_applied = False


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int):  # torch.cuda.current_device() returns an int on GPU
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _cpu_factory(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False  # pinning needs a CUDA driver
        return fn(*args, **kwargs)

    return wrapper


class _NoopNvtx:
    @staticmethod
    def range_push(*_: Any, **__: Any) -> None:
        return None

    @staticmethod
    def range_pop(*_: Any, **__: Any) -> None:
        return None

    @staticmethod
    def range(*_: Any, **__: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def mark(*_: Any, **__: Any) -> None:
        return None


class CpuCudaShim(types.SimpleNamespace):
    """What megatron.core sees as `torch.cuda` without CUDA. Unlisted attributes fall through to torch.cuda."""

    def __init__(self) -> None:
        super().__init__(
            is_available=lambda: False,
            current_device=lambda: torch.device("cpu"),
            device_count=lambda: 0,
            synchronize=lambda *a, **k: None,
            empty_cache=lambda: None,
            get_rng_state=lambda *a, **k: torch.get_rng_state(),
            set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
            manual_seed=lambda seed: torch.manual_seed(seed),
            manual_seed_all=lambda seed: torch.manual_seed(seed),
            nvtx=_NoopNvtx(),
            random=types.SimpleNamespace(  # the RNG tracker's fork reads torch.cuda.random.get_rng_state
                get_rng_state=lambda *a, **k: torch.get_rng_state(),
                set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
            ),
            FloatTensor=torch.FloatTensor,
            HalfTensor=torch.HalfTensor,
            BFloat16Tensor=torch.BFloat16Tensor,
            memory_allocated=lambda *a, **k: 0,
            max_memory_allocated=lambda *a, **k: 0,
            memory_reserved=lambda *a, **k: 0,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class CudaToCpuTorch(types.ModuleType):
    """A view of the torch module in which CUDA devices are the CPU. Installed as `torch` in megatron modules."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.__dict__["cuda"] = CpuCudaShim()
        for name in _FACTORIES:
            self.__dict__[name] = _cpu_factory(getattr(torch, name))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


_CPU_TORCH: CudaToCpuTorch | None = None


def _patch_module(module: types.ModuleType) -> None:
    if getattr(module, "torch", None) is torch:
        module.torch = _CPU_TORCH  # type: ignore[attr-defined]


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


@contextlib.contextmanager
def cpu_tensor_methods() -> Iterator[None]:
    """While active, `tensor.type()` reports CUDA type names for CPU float tensors (megatron checks the string)
    and `tensor.cuda()` returns the tensor itself (megatron moves buffers to the GPU before collectives)."""
    original_type, original_cuda = torch.Tensor.type, torch.Tensor.cuda

    def spoofed_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = original_type(self, *args, **kwargs)
        if not args and not kwargs:
            return _CUDA_TYPE_NAMES.get(result, result)
        return result

    def identity_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.type = spoofed_type  # type: ignore[method-assign]
    torch.Tensor.cuda = identity_cuda  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = original_type  # type: ignore[method-assign]
        torch.Tensor.cuda = original_cuda  # type: ignore[method-assign]


def _with_cpu_tensor_methods(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cpu_tensor_methods():
            return fn(*args, **kwargs)

    wrapper.__megafin_cpu_compat__ = True  # type: ignore[attr-defined]
    return wrapper


def _set_cpu_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def is_active() -> bool:
    return _applied


def apply() -> bool:
    """Patch megatron-core for CPU execution. Returns True if patches are active. Idempotent; a no-op with CUDA."""
    global _applied, _CPU_TORCH
    if _applied:
        return True
    if torch.cuda.is_available():
        return False
    _CPU_TORCH = CudaToCpuTorch()
    for name in _MEGATRON_MODULES:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and isinstance(module, types.ModuleType):
            _patch_module(module)
    sys.meta_path.insert(0, AfterImport(lambda name: name.startswith("megatron.core"), _patch_module))

    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer
    from megatron.core.tensor_parallel import random as tp_random

    tp_random._set_cuda_rng_state = _set_cpu_rng_state
    DistOpt = distrib_optimizer.DistributedOptimizer
    DistOpt.__init__ = _with_cpu_tensor_methods(DistOpt.__init__)  # param.type() checks
    DistOpt.get_parameter_state_dp_zero = _with_cpu_tensor_methods(DistOpt.get_parameter_state_dp_zero)  # .cuda()
    optimizer.Float16OptimizerWithFloat16Params.__init__ = _with_cpu_tensor_methods(
        optimizer.Float16OptimizerWithFloat16Params.__init__)  # param.type() checks (bf16)
    clip_grads.clip_grad_by_total_norm_fp32 = _with_cpu_tensor_methods(clip_grads.clip_grad_by_total_norm_fp32)
    from megatron.core.models.common.language_module.language_module import LanguageModule

    LanguageModule.setup_embeddings_and_output_layer = _with_cpu_tensor_methods(  # tied embeddings at pp>1: .cuda()
        LanguageModule.setup_embeddings_and_output_layer)
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    RotaryEmbedding.forward = _with_cpu_tensor_methods(  # parallel.cp > 1: get_pos_emb_on_this_cp_rank's .cuda()
        RotaryEmbedding.forward)
    for module in (optimizer, distrib_optimizer):  # they imported the function by name
        if hasattr(module, "clip_grad_by_total_norm_fp32"):
            module.clip_grad_by_total_norm_fp32 = clip_grads.clip_grad_by_total_norm_fp32
    _applied = True
    logger.info("megatron-core CPU compatibility layer active (no CUDA)")
    return True
