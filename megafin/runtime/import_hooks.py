"""A meta-path finder that lets a module load as it always does, then runs a hook on it: how megafin adjusts the
megatron-core modules it must (megafin/runtime/cpu_compat.py, megafin/runtime/deferred_compile.py) at their import,
whenever that happens. Imports nothing beyond the standard library."""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


class AfterImport:
    """Finds each module `wanted(name)` selects with the other finders on sys.meta_path and loads it with its own
    loader; `hook(module)` runs right after the module's code."""

    def __init__(self, wanted: Callable[[str], bool], hook: Callable[[types.ModuleType], None]) -> None:
        self._wanted = wanted
        self._hook = hook

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not self._wanted(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _HookedLoader(spec.loader, self._hook)
                return spec
        return None


class _HookedLoader:
    def __init__(self, loader: Any, hook: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
