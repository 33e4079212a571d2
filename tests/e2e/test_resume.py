"""Exact resume: 20 straight steps vs 10 steps, SIGKILL, resume to 20 (bit for bit on the same layout, within
2e-6 relative at another TP or PP); a crash in the middle of a save leaves `latest` at the previous good checkpoint."""
from __future__ import annotations

import time

import pytest

from megafin.checkpoint.manager import latest_checkpoint, read_meta
from tests.helpers import FAST, TINY_RECIPE, BatchedRuns, assert_ok, data_overrides, kill_session, losses, run_train, \
    start_train, train_here

STEPS = 20
COMMON = ["train.steps=20", "checkpoint.interval=10", "checkpoint.keep_last=3"]
# Another layout sums in another order: its steps 11-20 drift from the straight run's by <= 7e-8 relative (measured
# under AVX-512 and scalar ATen kernels, MKL's COMPATIBLE GEMMs). 2e-6 leaves 30x (it was abs 1e-5 on losses ~5.5)
# and is 500x below a 1e-3 change.
LAYOUT_REL = 2e-6


def _overrides(tiny_data, run_dir, *extra):
    return [*FAST, *data_overrides(tiny_data), *COMMON, f"run_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    assert_ok(train_here(_overrides(tiny_data, run_dir)))
    return run_dir


def test_sigkill_after_checkpoint_then_resume_is_bit_exact(straight, tiny_data, tmp_path):
    proc = start_train(_overrides(tiny_data, tmp_path))
    deadline = time.time() + 240
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "saved checkpoint" in line and "step_0000010" in line:
            break
        assert time.time() < deadline, "".join(seen)
    kill_session(proc)  # SIGKILL to the trainer and its checkpoint workers
    assert latest_checkpoint(tmp_path).name == "step_0000010"
    assert_ok(train_here(_overrides(tiny_data, tmp_path, "train.resume=auto")))
    want, got = losses(straight), losses(tmp_path)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert got[step] == want[step], f"step {step}: {got[step]!r} != {want[step]!r}"  # bit for bit


# The distributed optimizer's runs (test_resume_is_bit_exact_for_distributed_optimizer_and_bf16).
SHORT = ["train.steps=8", "scheduler.warmup_steps=2", "checkpoint.interval=4"]
DIST_OPT = ["parallel.distributed_optimizer=true"]


@pytest.fixture(scope="module")
def two_rank_runs(straight, tiny_data, tmp_path_factory):
    """This module's 2-rank runs, in order in one torchrun launch (tests/helpers.py: BatchedRuns): name -> run dir."""
    root = tmp_path_factory.mktemp("two_ranks")
    resume_at_10 = f"train.resume={straight / 'checkpoints' / 'step_0000010'}"
    runs = {"tp2": _overrides(tiny_data, root / "tp2", resume_at_10, "parallel.tp=2"),
            "pp2": _overrides(tiny_data, root / "pp2", resume_at_10, "parallel.pp=2"),
            "dist_opt_straight": [*_overrides(tiny_data, root / "dist_opt_straight"), *SHORT, *DIST_OPT],
            "dist_opt_resumed": [*_overrides(tiny_data, root / "dist_opt_resumed"), *SHORT, *DIST_OPT,
                                 f"train.resume={root / 'dist_opt_straight' / 'checkpoints' / 'step_0000004'}"]}
    return BatchedRuns({name: (TINY_RECIPE, overrides) for name, overrides in runs.items()}, root / "batch").run_dir


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_resume_at_another_layout_matches_within_rounding(layout, straight, two_rank_runs):
    assert read_meta(straight / "checkpoints" / "step_0000010")["layout"] == {"tp": 1, "pp": 1, "dp": 1}
    want, got = losses(straight), losses(two_rank_runs(layout))
    assert sorted(got) == list(range(11, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=LAYOUT_REL), f"step {step}"


def test_crash_during_save_keeps_latest_at_previous_checkpoint(tiny_data, tmp_path):
    """Saves at steps 3 and 6; the process dies inside the second (a new process: the fault exits it)."""
    short = ["train.steps=6", "scheduler.decay_steps=20", "checkpoint.interval=3"]
    run_dir = tmp_path / "crashed"
    proc = run_train(_overrides(tiny_data, run_dir, *short), env={"MEGAFIN_FAULT_CRASH_IN_SAVE": "6"})
    assert_ok(proc, 86)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_0000006.partial").is_dir()  # the broken save is there...
    assert not (ckpts / "step_0000006").exists()
    assert latest_checkpoint(run_dir).name == "step_0000003"  # ...but latest never pointed at it
    # Resuming picks up the good checkpoint and ends where an uninterrupted run ends.
    assert_ok(train_here(_overrides(tiny_data, run_dir, *short, "train.resume=auto")))
    assert latest_checkpoint(run_dir).name == "step_0000006"
    assert not (ckpts / "step_0000006.partial").exists()
    assert_ok(train_here(_overrides(tiny_data, tmp_path / "straight", *short)))
    assert losses(run_dir)[6] == losses(tmp_path / "straight")[6]


def test_keep_last_prunes_old_checkpoints(tiny_data, tmp_path):
    assert_ok(train_here([*FAST, *data_overrides(tiny_data), "train.steps=6", "checkpoint.interval=2",
                         "checkpoint.keep_last=2", f"run_dir={tmp_path}"]))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_0000004", "step_0000006"]
    # Resumed at its last step, the run has nothing to do and rewrites no checkpoint (a rewrite would be a new
    # checkpoint to anything keyed on its bytes, such as a DPO reference cache).
    stamp = (tmp_path / "checkpoints" / "step_0000006" / ".metadata").stat().st_mtime_ns
    proc = train_here([*FAST, *data_overrides(tiny_data), "train.steps=6", "checkpoint.interval=2",
                       "checkpoint.keep_last=2", "checkpoint.save_at_end=true", f"run_dir={tmp_path}",
                       "train.resume=auto"])
    assert_ok(proc)
    assert "saved checkpoint" not in proc.stdout
    assert (tmp_path / "checkpoints" / "step_0000006" / ".metadata").stat().st_mtime_ns == stamp


# bf16 on half the tiny model and batch and a quarter of its sequence: CPUs without AVX512-BF16 or AMX (Zen 3, say)
# multiply bf16 matrices at ~1-2 GFLOP/s against ~100 in fp32, and this test took 95 s there at full size (27 s at
# half); what it checks does not depend on the size.
BF16_SMALL = ["precision.dtype=bf16", "model.num_layers=2", "parallel.global_batch_size=4", "data.seq_length=32"]


@pytest.mark.parametrize("variant", ["distributed-optimizer-dp2", "bf16"])
def test_resume_is_bit_exact_for_distributed_optimizer_and_bf16(variant, tiny_data, tmp_path, request):
    """The DistributedOptimizer (torch-Adam fallback, see megafin/train/optimizer_fixes.py; 2 ranks) and the bf16
    optimizer (1 process) save and resume exactly too."""
    if variant == "bf16":
        straight, resumed = tmp_path / "straight", tmp_path / "resumed"
        assert_ok(train_here([*_overrides(tiny_data, straight), *SHORT, *BF16_SMALL]))
        ckpt = straight / "checkpoints" / "step_0000004"
        assert_ok(train_here([*_overrides(tiny_data, resumed), *SHORT, *BF16_SMALL, f"train.resume={ckpt}"]))
    else:
        runs = request.getfixturevalue("two_rank_runs")
        straight, resumed = runs("dist_opt_straight"), runs("dist_opt_resumed")
    want, got = losses(straight), losses(resumed)
    assert sorted(got) == [5, 6, 7, 8]
    assert [got[s] for s in got] == [want[s] for s in got]


def test_dpo_resume_is_bit_exact_and_reuses_reference_logps(tiny_data, tmp_path):
    """Stop a DPO run after its step-3 checkpoint, resume in the same run directory: the reference log-probs are
    read back (not recomputed) and steps 4-6 equal an uninterrupted run bit for bit."""
    from tests.helpers import REPO

    recipe = REPO / "recipes/tiny/dpo.yaml"
    common = [*FAST, f"data.tokenizer={tiny_data / 'tokenizer'}",
              f"data.blend=[{{path: {tiny_data / 'preference'}, weight: 1}}]", "scheduler.decay_steps=6",
              "scheduler.warmup_steps=1", "checkpoint.interval=3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert_ok(train_here([*common, "train.steps=6", f"run_dir={straight}"], recipe=recipe))
    assert_ok(train_here([*common, "train.steps=3", f"run_dir={resumed}"], recipe=recipe))
    cache = resumed / "reference_logps" / "meta.json"
    stamp = cache.stat().st_mtime_ns
    proc = train_here([*common, "train.steps=6", "train.resume=auto", f"run_dir={resumed}"], recipe=recipe)
    assert_ok(proc)
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    want, got = losses(straight), losses(resumed)
    assert [got[s] for s in (4, 5, 6)] == [want[s] for s in (4, 5, 6)]
