"""`megafin pipeline --slurm` on the real local Slurm (CPU profile), reduced to two stages: a data_prep stage run
inline by slurm/pipeline.sbatch, then a training stage the job runs through the recipe's own slurm/sft.sbatch
(slurm/launch.sh), submitted with --dependency=afterok on the first; both end stamped done, and submitting again
submits nothing."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, TINY_MODEL

SAMPLES = REPO / "recipes" / "tiny" / "data"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def pipeline_yaml(tmp_path: Path, shared_data: Path) -> Path:
    model = "\n".join(f"      {k}: {v}" for k, v in (o.split("=") for o in TINY_MODEL))
    path = tmp_path / "p.yaml"
    path.write_text(f"""\
out: {tmp_path / 'out'}
stages:
  data:
    kind: data_prep
    tokenizer: {{train: {{vocab_size: 400, inputs: [{SAMPLES / 'finance_corpus.jsonl'}, fpb]}}}}
    sets: {{fpb: {{path: {shared_data / 'fpb/train.jsonl'}, limit: 60, holdout: 0.1}}}}
    outputs: {{instruct: {{sft: [fpb], seq_length: 256}}}}
  sft:
    kind: train
    recipe: recipes/tiny/sft.yaml
    data: "@data/instruct"
    tokenizer: "@data/tokenizer"
    overrides:
{model}
      data.seq_length: 256
      model.max_position_embeddings: 256
      train.steps: 2
      scheduler.warmup_steps: 0
      checkpoint.interval: 0
      train.eval_interval: 0
      data.split: "100,0,0"
      logging.wandb: false
""")
    return path


def submit(slurm, pipeline: Path) -> subprocess.CompletedProcess:
    env = {**slurm.env, "MEGAFIN_PROFILE": "cpu", "MEGAFIN_HOME": str(REPO), "MEGAFIN_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "megafin", "pipeline", str(pipeline), "--slurm",
                           "--sbatch-args", "--gpus-per-node=0 --cpus-per-task=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def wait_for(slurm, job: str, timeout: float) -> str:
    deadline = time.time() + timeout
    state = None
    while time.time() < deadline:
        state = slurm.job_field(int(job), "JobState")
        if state in TERMINAL:
            return state
        time.sleep(0.5)
    slurm.run("scancel", job)
    raise AssertionError(f"job {job} not finished after {timeout:.0f}s (state {state})")


def test_pipeline_submits_dependent_jobs_and_resubmits_nothing_when_done(slurm, shared_data, tmp_path):
    pipeline = pipeline_yaml(tmp_path, shared_data)
    proc = submit(slurm, pipeline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
    assert list(jobs) == ["data", "sft"] and all(j.isdigit() for j in jobs.values()), proc.stdout
    dependency = slurm.job_field(int(jobs["sft"]), "Dependency")
    assert dependency in (f"afterok:{jobs['data']}(unfulfilled)", f"afterok:{jobs['data']}(satisfied)", "(null)")
    logs = tmp_path / "out" / "slurm"
    for name in ("data", "sft"):
        state = wait_for(slurm, jobs[name], 300)
        log = (logs / f"{name}-{jobs[name]}.out").read_text()
        assert state == "COMPLETED", log[-4000:]
    log = (logs / f"sft-{jobs['sft']}.out").read_text()
    assert "megafin-slurm: done (exit 0)" in log and "megafin pipeline: [sft] done" in log, log  # via launch.sh
    for name in ("data", "sft"):
        assert (tmp_path / "out" / name / ".pipeline" / "done.json").is_file()
    assert (tmp_path / "out/sft/run/checkpoints/step_0000002").is_dir()

    again = submit(slurm, pipeline)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split() == ["data", "done", "sft", "done"]
