"""bench/gpu_check.sh on a CPU (GPU_CHECK_DRY_RUN=1): it runs what a CPU can, says `skipped` for the rest, and prints
one table. The parts here leave out the gloo train step (a minute under load); run the whole dry run by hand:
`GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh`."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def test_dry_run_prints_one_table_and_skips_what_needs_cuda(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(tmp_path)}
    parts = "env,configs,kernels,kernel_tests,stages,te,width8b,peer"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--parts", parts, "--work", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("| check"):].splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table if line.startswith("| ")}
    assert rows["libraries"] == "info" and rows["fusions (auto)"] == "info"
    assert rows["run configs"] == "ok"  # every GPU run's overrides validate here, before a GPU machine is started
    assert rows["plan: 8B width, 2 layers"] == "info"
    assert rows["peer flags (Megatron-LM)"] in ("ok", "skipped")  # skipped where .megatron-lm/ is not filled
    cuda_only = ("kernels", "kernel tests (CUDA)", "stages: triton vs peer", "TE spec: fp8 vs bf16", "Llama-3-8B width",
                 "peer: Megatron-LM, 8B width, 2 layers")
    assert {rows[name] for name in cuda_only} == {"skipped"}
    assert "FAIL" not in rows.values()
