"""The warning for a bf16 run on a CPU without bf16 matrix instructions (megafin/runtime/cpu_bf16.py): read from the
CPU's flags, said only for bf16 on a CPU, and nothing where the flags cannot be read."""
from __future__ import annotations

from megafin.runtime import cpu_bf16

ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"


def test_read_from_the_cpu_flags(tmp_path):
    for text, native in ((ZEN3, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), ("processor\t: 0\n", None)):
        (tmp_path / "cpuinfo").write_text(text)
        assert cpu_bf16.native_bf16_matmul(tmp_path / "cpuinfo") is native
    assert cpu_bf16.native_bf16_matmul(tmp_path / "absent") is None


def test_said_only_for_bf16_on_a_cpu_that_lacks_them(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "native_bf16_matmul", lambda: False)
    assert "AVX512-BF16" in cpu_bf16.slow_bf16_warning("bf16", "cpu")
    assert cpu_bf16.slow_bf16_warning("fp32", "cpu") is None
    assert cpu_bf16.slow_bf16_warning("bf16", "cuda") is None
    for native in (True, None):
        monkeypatch.setattr(cpu_bf16, "native_bf16_matmul", lambda native=native: native)
        assert cpu_bf16.slow_bf16_warning("bf16", "cpu") is None
