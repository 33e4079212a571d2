"""slurm/cpt.sbatch on a real single-node Slurm (CPU profile: gloo, 2 tasks = DP 2).

- a plain submission finishes and its metrics equal a direct torchrun run of the same recipe;
- USR1 to the batch shell (what `--signal=B:USR1@N` does before the time limit; sent here with
  `scancel --signal=USR1 --batch` once a few steps are written, so the test does not wait for Slurm's coarse
  timer) -> checkpoint, exit 75, `scontrol requeue`, resume from latest, losses bit-equal to the uninterrupted run;
- a task SIGKILLed mid-run ends the job in bounded time (no requeue), and a resubmission with train.resume=auto
  resumes bit-equal (the requeued or resubmitted attempt takes the run_dir lock its dead predecessor held);
- bad submissions fail fast with the trainer's one-line message and are never requeued.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import FAST, REPO, data_overrides, run_train

STEPS = 20
CPT = REPO / "slurm" / "cpt.sbatch"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}
COMPARED = ("loss", "grad_norm", "lr", "consumed_samples", "skipped")


def _overrides(tiny_data: Path) -> list[str]:
    return [*FAST, *data_overrides(tiny_data), f"train.steps={STEPS}"]


def _records(run_dir: Path) -> list[dict]:
    return [{k: rec.get(k) for k in ("step", *COMPARED)}
            for rec in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> list[dict]:
    """The uninterrupted run, launched directly with torchrun (2 processes, DP 2)."""
    run_dir = tmp_path_factory.mktemp("torchrun_ref")
    proc = run_train([*_overrides(tiny_data), f"run_dir={run_dir}"], nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = _records(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return records


def submit(slurm, out_dir: Path, args: list[str], ntasks: int = 2, sbatch_flags: tuple[str, ...] = (),
           script: Path = CPT, env: dict | None = None) -> tuple[int, Path]:
    """`sbatch` the way a user on a CPU cluster would (docs/slurm.md), from the repo root."""
    env = {**slurm.env, "MEGAFIN_PROFILE": "cpu", "MEGAFIN_HOME": str(REPO), "MEGAFIN_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO), "RUN_DIR": str(out_dir / "run"), **(env or {})}
    out = out_dir / "job-%j.out"
    proc = slurm.run("sbatch", "--parsable", "--gpus-per-node=0", "--nodes=1", f"--ntasks-per-node={ntasks}",
                     f"--ntasks={ntasks}", f"--output={out}", *sbatch_flags, str(script), *args, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.strip().split(";")[0])
    return job, out_dir / f"job-{job}.out"


def wait_for(slurm, job: int, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = slurm.job_field(job, "JobState")
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    slurm.run("scancel", str(job))
    raise AssertionError(f"job {job} not finished after {timeout:.0f}s (state {state})")


@pytest.fixture(scope="module", autouse=True)
def time_limit_job(slurm, tmp_path_factory):
    """Submitted first and left running beside the training tests: Slurm's own `--signal=B:USR1@50` timer on a
    `--time=1` job, with a stand-in trainer (tests/slurm/fake_trainer.sh) so it costs no CPU. Checked at the end."""
    out_dir = tmp_path_factory.mktemp("time_limit")
    return submit(slurm, out_dir, ["recipes/tiny/cpt.yaml", "train.resume=none"], ntasks=1,
                  sbatch_flags=("--time=1", "--signal=B:USR1@50", "--job-name=megafin-time-limit"),
                  env={"MEGAFIN_PYTHON": str(REPO / "tests" / "slurm" / "fake_trainer.sh")})


def test_sbatch_cpt_two_tasks_matches_torchrun(slurm, tiny_data, reference, tmp_path):
    job, out = submit(slurm, tmp_path, ["recipes/tiny/cpt.yaml", *_overrides(tiny_data)])
    state = wait_for(slurm, job, 300)
    log = out.read_text()
    assert state == "COMPLETED", log[-4000:]
    assert slurm.job_field(job, "ExitCode") == "0:0"
    assert "world 2 = tp 1 x pp 1 x dp 2" in log and "srun launch" in log, log[-4000:]
    assert _records(tmp_path / "run") == reference


def test_usr1_checkpoints_requeues_and_resumes_bit_exact(slurm, tiny_data, reference, tmp_path):
    # --time and --signal as a user would set them; the test delivers the same USR1 to the batch shell itself.
    job, out = submit(slurm, tmp_path, ["recipes/tiny/cpt.yaml", *_overrides(tiny_data)],
                      sbatch_flags=("--time=10", "--signal=B:USR1@60"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert slurm.job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), out.read_text()[-4000:]
        assert time.time() < deadline, "no training steps after 240 s"
        time.sleep(0.2)
    sent = slurm.run("scancel", "--signal=USR1", "--batch", str(job))
    assert sent.returncode == 0, sent.stderr
    state = wait_for(slurm, job, 300)
    log = out.read_text()
    assert state == "COMPLETED", log[-6000:]
    assert slurm.job_field(job, "Restarts") == "1", log[-6000:]
    assert "megafin-slurm: received SIGUSR1" in log
    assert "megafin: received SIGUSR1; saving a checkpoint" in log
    assert "exit 75: resume with train.resume=auto" in log
    assert "requeueing job" in log
    assert "attempt 1:" in log and "resumed from" in log
    stopped_at = int(log.split("stopped on SIGUSR1 after step ")[1].split(";")[0])
    assert 3 <= stopped_at < STEPS, "the signal must land mid-run"
    assert _records(tmp_path / "run") == reference  # each step once, bit-equal losses, grad norms and lr
    # The requeued attempt took the run_dir lock the first attempt had held (the kernel released it at its exit).
    holder = json.loads((tmp_path / "run" / ".megafin.lock").read_text())
    assert (holder["slurm_job_id"], holder["slurm_restart_count"]) == (str(job), "1")


def test_time_limit_signal_from_slurm_requeues_and_resumes(slurm, time_limit_job):
    """The real `--time`/`--signal=B:USR1@N` path: slurmctld signals the batch shell, the launcher forwards USR1 to
    the srun step, the (stand-in) trainer exits 75, the job requeues itself and the next attempt resumes."""
    job, out = time_limit_job
    state = wait_for(slurm, job, 240)
    log = out.read_text()
    assert state == "COMPLETED", log
    assert slurm.job_field(job, "Restarts") == "1", log
    assert "megafin-slurm: received SIGUSR1; forwarding" in log, log
    assert "requeueing job" in log, log
    assert "fake-trainer: resuming (train.resume=auto)" in log, log


def _rank_process(job: int, rank: int) -> psutil.Process | None:
    for p in psutil.process_iter():
        try:
            env = p.environ()
            if env.get("SLURM_JOB_ID") == str(job) and env.get("SLURM_PROCID") == str(rank) \
                    and "megafin.train" in " ".join(p.cmdline()):
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return None


def test_rank_sigkilled_under_srun_ends_the_job_and_a_resubmission_resumes(slurm, tiny_data, reference, tmp_path):
    """kill -9 of one srun task mid-run: the other must not hang (it fails at its next collective, and srun --wait
    bounds it anyway), the job ends without a requeue, and resubmitting with train.resume=auto (the previous holder
    of the run_dir lock is dead) finishes with the uninterrupted run's losses, bit for bit."""
    args = ["recipes/tiny/cpt.yaml", *_overrides(tiny_data), "checkpoint.interval=4"]
    job, out = submit(slurm, tmp_path, args)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file():
        assert slurm.job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), out.read_text()[-4000:]
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.2)
    victim = _rank_process(job, 1)
    assert victim is not None, out.read_text()[-4000:]
    victim.send_signal(signal.SIGKILL)
    t0 = time.time()
    state = wait_for(slurm, job, 180)
    log = out.read_text()
    assert state == "FAILED" and time.time() - t0 < 60, log[-4000:]
    assert slurm.job_field(job, "Restarts") == "0"
    assert "not requeueing" in log
    assert _rank_process(job, 0) is None and _rank_process(job, 1) is None
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert killed_at < STEPS, "the kill must land mid-run"

    job2, out2 = submit(slurm, tmp_path, [*args, "train.resume=auto"])
    assert wait_for(slurm, job2, 300) == "COMPLETED", out2.read_text()[-4000:]
    assert f"resumed from {tmp_path / 'run' / 'checkpoints'}" in out2.read_text()
    assert _records(tmp_path / "run") == reference
    assert json.loads((tmp_path / "run" / ".megafin.lock").read_text())["slurm_job_id"] == str(job2)


@pytest.mark.parametrize("case", ["unknown_recipe", "invalid_override", "too_many_tasks", "gpu_profile_no_gpus"])
def test_bad_submission_fails_fast_without_requeue(case, slurm, tiny_data, tmp_path):
    args, ntasks, env = ["recipes/tiny/cpt.yaml", *_overrides(tiny_data)], 2, {}
    verdict = "config error (exit 2): not requeueing"
    if case == "unknown_recipe":
        args[0] = "recipes/tiny/nope.yaml"
        message = "megafin: config error: recipe: file not found: recipes/tiny/nope.yaml"
    elif case == "invalid_override":
        args.append("parallel.tp=two")
        message = "megafin: config error: parallel.tp: expected an integer, got 'two'"
    elif case == "too_many_tasks":  # 3 ranks cannot be tp=2 x pp=1 x dp
        args.append("parallel.tp=2")
        ntasks = 3
        message = "megafin: config error: parallel.tp: expected tp*pp=2 to divide the world size 3"
    else:  # the default GPU profile on a job without GPUs: the launcher refuses before starting any rank
        env = {"MEGAFIN_PROFILE": "gpu"}
        message = "megafin-slurm: error: MEGAFIN_PROFILE=gpu but the job has no GPUs"
        verdict = message
    t0 = time.time()
    job, out = submit(slurm, tmp_path, args, ntasks=ntasks, env=env)
    state = wait_for(slurm, job, 90)
    log = out.read_text()
    assert state == "FAILED", log
    assert slurm.job_field(job, "ExitCode") == "2:0", log
    assert slurm.job_field(job, "Restarts") == "0", log
    assert message in log, log
    assert verdict in log
    assert time.time() - t0 < 60, "a config error must fail fast"
    time.sleep(1)
    assert slurm.job_field(job, "JobState") == "FAILED"  # and stays failed: no requeue loop
