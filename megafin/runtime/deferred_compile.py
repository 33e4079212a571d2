"""megatron-core's fusion functions are compiled on their first call, not when megatron-core is imported.

megatron.core.jit sets `jit_fuser = torch.compile`, and ~16 megatron.core modules decorate functions with it at
import. Calling torch.compile imports torch._dynamo and torch._inductor: 2.6 s of a process's 7-9 s of start-up on
2 cores, paid by every megafin process, though a CPU run never calls those functions (megafin turns the fusions off
without CUDA: megafin/models/fusions.py). torch.compile itself compiles nothing until the first call, so a wrapper
that calls torch.compile at that first call runs the same code, and a process that never calls them skips the
imports.

`install()` (from megafin/__init__.py, so before any megafin module imports megatron-core) puts a one-shot finder on
sys.meta_path that swaps megatron.core.jit's `jit_fuser` for the deferring wrapper right after that module runs. It
imports nothing itself. A process that imported megatron-core before megafin keeps the eager decorator. Listed in
megafin/runtime/mcore_internals.py.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

_MODULE = "megatron.core.jit"


def deferred(compile_fn: Callable[..., Any]) -> Callable[..., Any]:
    """`compile_fn` (torch.compile) with the same signature, called at the decorated function's first call."""

    @functools.wraps(compile_fn)
    def compile_later(model: Any = None, **kwargs: Any) -> Any:
        if model is None:  # used as @jit_fuser(**kwargs)
            return lambda fn: compile_later(fn, **kwargs)
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(model)
        def call(*args: Any, **kw: Any) -> Any:
            if not compiled:
                compiled.append(compile_fn(model, **kwargs))
            return compiled[0](*args, **kw)

        call.__megafin_deferred_compile__ = True  # type: ignore[attr-defined]
        return call

    return compile_later


class _DeferJitFuser:
    """Meta-path finder: runs megatron.core.jit with its own loader, then swaps its torch.compile `jit_fuser`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _SwapAfterExec(spec.loader)
                return spec
        return None


class _SwapAfterExec:
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        import torch

        if getattr(module, "jit_fuser", None) is torch.compile:
            module.jit_fuser = deferred(torch.compile)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def install() -> None:
    """Once per process, before megatron-core's first import; a no-op after it."""
    if _MODULE in sys.modules or any(isinstance(f, _DeferJitFuser) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferJitFuser())
