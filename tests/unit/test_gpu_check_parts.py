"""bench/gpu_check.py's parts, the pieces a CPU can check: what a failed Megatron-LM run's row says (the second and
third GPU sessions: a shutdown warning, then a rank-prefixed out-of-memory error, hid the cause), the Makefile that
lets Megatron-LM's start-up `make` pass where the megatron-core wheel ships its helpers built, the peer's peak memory
from its own reports, and how the generate part compares answers."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_check  # noqa: E402

MEGATRON_LM_DIED = """\
 > building train, validation, and test datasets ...
ERROR:megatron.core.datasets.utils:Failed to compile the C++ dataset helper functions
make: *** No targets specified and no makefile found.  Stop.
[rank0]:[W1127 05:36:21.136120385 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not called
E1127 05:36:22.726000 1704 torch/distributed/elastic/multiprocessing/api.py:986] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""


def test_a_dead_peers_row_names_its_error_not_the_warnings_after_it():
    said = gpu_check.child_error(MEGATRON_LM_DIED)
    assert "Failed to compile the C++ dataset helper functions" in said and "make: ***" in said
    assert "destroy_process_group" not in said


def test_a_megafin_run_still_gives_its_own_one_line_error():
    out = "megafin: config error: optimizer.min_lr: expected at most optimizer.lr\n" + MEGATRON_LM_DIED
    assert gpu_check.child_error(out) == "megafin: config error: optimizer.min_lr: expected at most optimizer.lr"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_noop_makefile_only_beside_built_helpers(tmp_path):
    empty = tmp_path / "no_helpers"
    empty.mkdir()
    assert not gpu_check.noop_makefile_beside_built_helpers(empty)  # nothing built: make should fail there
    built = tmp_path / "datasets"
    built.mkdir()
    (built / "helpers_cpp.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    assert gpu_check.noop_makefile_beside_built_helpers(built)
    proc = subprocess.run(["make", "-C", str(built)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # what megatron.core.datasets.utils.compile_helpers runs
    (built / "Makefile").write_text("default:\n\t@echo a real one\n")
    assert not gpu_check.noop_makefile_beside_built_helpers(built)  # a Makefile that is there is never replaced
    assert "a real one" in (built / "Makefile").read_text()


# the third GPU session's peer row, from Megatron-LM's log: a rank's traceback comes prefixed with `[rank0]: `
MEGATRON_LM_OOM = """\
[rank0]:     custom_backward(output_tensor[0], output_tensor_grad[0])
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of 79.18 GiB
[rank0]:[W1127 08:20:45.937082476 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not called
E1127 08:20:48.089000 2291 torch/distributed/elastic/multiprocessing/api.py:986] failed (exitcode: 1) local_rank: 0
"""


def test_a_ranks_prefixed_exception_is_the_rows_error():
    said = gpu_check.child_error(MEGATRON_LM_OOM)
    assert said.startswith("[rank0]: torch.OutOfMemoryError: CUDA out of memory")
    assert "destroy_process_group" not in said


def test_the_peers_peak_memory_is_its_largest_report():
    log = ("[Rank 0] (after 1 iterations) memory (MB) | allocated: 20480.00 | max allocated: 40960.00 | reserved: 1\n"
           " [2026-11-27 08:20:45] iteration        2/       8 | elapsed time per iteration (ms): 812.5 |\n"
           "[Rank 0] (after 2 iterations) memory (MB) | allocated: 30720.00 | max allocated: 51200.00 | reserved: 1\n")
    assert gpu_check.peak_allocated_gib(log) == 50.0
    assert gpu_check.iteration_ms(log) == [812.5]
    assert gpu_check.peak_allocated_gib("no report") is None


def test_answers_compared_with_where_they_part():
    assert gpu_check.same_answers(["a b", "c"], ["a b", "c"]) == (2, "")
    same, where = gpu_check.same_answers(["the rate rose", "x"], ["the rate fell", "x"])
    assert same == 1 and where == "; first difference after 9 characters: 'rose' vs 'fell'"
    assert gpu_check.same_answers(["ab"], ["abc"])[1] == "; first difference after 2 characters: '' vs 'c'"


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie waiting for a parent that is not this test."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_background_part_over_its_limit_is_killed_with_its_children(tmp_path, monkeypatch):
    """The fourth GPU session: the generate chain ran past its limit, and its rows came in later, beside a timed
    part. A background part is now a child process in its own session: over its limit it is killed with every
    process it started, a FAIL row says so, and its finish still runs (to report what it had done)."""
    import os
    import time

    monkeypatch.setattr(gpu_check, "ROWS", [])
    monkeypatch.setitem(gpu_check.LIMITS_S, "slow", 2.0)
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(120)\n")
    finished = []
    t0 = time.perf_counter()
    gpu_check.start_background("slow", [sys.executable, "-c", script], tmp_path / "slow.log", dict(os.environ),
                               finished.append)
    gpu_check.join_background(tmp_path)
    assert time.perf_counter() - t0 < 30
    assert gpu_check.ROWS[0][:2] == ("slow", "FAIL") and "over its 2.0 s limit" in gpu_check.ROWS[0][2]
    assert finished and finished[0].returncode < 0 and not gpu_check.BACKGROUND
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        if _gone(grandchild):
            break
        time.sleep(0.1)
    assert _gone(grandchild)


def test_a_background_childs_rows_come_back_through_rows_out(tmp_path, monkeypatch):
    """What the generate child writes with --rows-out: one JSON row a line, as the parent reads them back."""
    import json

    monkeypatch.setattr(gpu_check, "ROWS", [])
    monkeypatch.setattr(gpu_check, "ROWS_OUT", tmp_path / "rows.jsonl")
    gpu_check.row("generate: megafin engine, GPU vs CPU", "ok", "16/16")
    assert [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == \
        [["generate: megafin engine, GPU vs CPU", "ok", "16/16"]]
