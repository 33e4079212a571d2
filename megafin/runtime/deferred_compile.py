"""megatron-core's fusion functions are compiled on their first call, not when megatron-core is imported.

megatron.core.jit sets `jit_fuser = torch.compile`, and ~16 megatron.core modules decorate functions with it at
import. Calling torch.compile imports torch._dynamo and torch._inductor (2.6 s by `python -X importtime`; `import
megafin.train.loop` went from 8.9 s to 4.8-5.6 s of wall time without it on 2 cores), paid by every megafin
process, though a CPU run never calls those functions (megafin turns the fusions off without CUDA:
megafin/models/fusions.py). torch.compile itself compiles nothing until the first call, so a wrapper
that calls torch.compile at that first call runs the same code, and a process that never calls them skips the
imports.

`install()` (from megafin/__init__.py, so before any megafin module imports megatron-core) puts a finder on
sys.meta_path (megafin/runtime/import_hooks.py) that swaps megatron.core.jit's `jit_fuser` for the deferring wrapper
right after that module runs. It imports nothing itself. A process that imported megatron-core before megafin keeps
the eager decorator. Listed in megafin/runtime/mcore_internals.py.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from megafin.runtime.import_hooks import AfterImport

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


def _swap_jit_fuser(module: Any) -> None:
    import torch  # megatron.core.jit has just imported it

    if getattr(module, "jit_fuser", None) is torch.compile:
        module.jit_fuser = deferred(torch.compile)


_FINDER = AfterImport(lambda name: name == _MODULE, _swap_jit_fuser)


def install() -> None:
    """Once per process, before megatron-core's first import; a no-op after it."""
    if _MODULE in sys.modules or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)
