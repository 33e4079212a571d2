"""megatron-core's torch.compile decorators compile at a function's first call (megafin/runtime/deferred_compile.py):
the same function runs, and a process that never calls one never imports torch._inductor."""
from __future__ import annotations

import subprocess
import sys

from megafin.runtime.deferred_compile import deferred
from tests.helpers import REPO


def _counting_compile(calls):
    def compile_fn(model, **kwargs):
        calls.append(kwargs)
        return lambda *a, **k: ("compiled", model(*a, **k))

    return compile_fn


def test_compiles_once_at_the_first_call_with_the_decorators_arguments():
    calls = []
    fuser = deferred(_counting_compile(calls))

    @fuser
    def plain(x, y=1):
        return x + y

    @fuser(dynamic=False)
    def with_kwargs(x):
        return 2 * x

    assert calls == [] and plain.__name__ == "plain"
    assert plain(1, y=2) == ("compiled", 3) and plain(5) == ("compiled", 6)
    assert with_kwargs(4) == ("compiled", 8)
    assert calls == [{}, {"dynamic": False}]


def test_a_megafin_process_imports_megatron_without_compiling():
    """In a fresh process (the test process may have imported megatron-core before megafin)."""
    code = ("import sys, torch, megafin.train.loop\n"
            "from megatron.core import jit\n"
            "from megatron.core.fusions import fused_bias_geglu, fused_bias_swiglu\n"
            "assert jit.jit_fuser.__wrapped__ is torch.compile, jit.jit_fuser\n"
            "assert fused_bias_geglu.geglu.__megafin_deferred_compile__\n"
            "assert fused_bias_swiglu.swiglu.__megafin_deferred_compile__\n"
            "assert 'torch._inductor.compile_fx' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
