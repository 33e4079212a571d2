"""Helpers shared by the trainer tests: tiny data, running the CLI as a user does, reading metrics."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TINY_RECIPE = REPO / "recipes" / "tiny" / "cpt.yaml"
# A 2-layer GQA Llama for in-process model tests (fast under the Triton interpreter too).
TINY_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.num_query_groups=2",
              "model.ffn_hidden_size=96", "model.max_position_embeddings=64"]
# Quiet, fast, deterministic defaults for test runs of the tiny recipe.
FAST = ["logging.wandb=false", "train.eval_interval=0", "checkpoint.interval=0", "checkpoint.save_at_end=false",
        "train.resume=none", "train.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_overrides(data_dir: Path) -> list[str]:
    return [f"data.tokenizer={data_dir / 'tokenizer'}",
            f"data.blend=[{{path: {data_dir / 'finance_text_document'}, weight: 0.7}}, "
            f"{{path: {data_dir / 'general_text_document'}, weight: 0.3}}]"]


def train_cmd(nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [PY, "-m", "megafin.train"]
    # --standalone: torchrun's agent binds its rendezvous store on a port the kernel picks and hands it to the
    # ranks, so no other process can take it in between (a port from free_port() could be, and was).
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "megafin.train"]


def run_train(overrides: Sequence[str], nproc: int = 1, recipe: Path = TINY_RECIPE, timeout: float = 300,
              env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run to completion. Output goes through files, not pipes: a process that dies hard can leave
    children alive holding inherited pipes (megatron's spawned save workers did, before megafin saved on threads), and a
    pipe reader would hang."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [*train_cmd(nproc), str(recipe), *overrides]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            kill_session(proc)  # reap whatever it spawned
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read())


def run_train_batch(runs: dict[str, tuple[Path, Sequence[str]]], plan_dir: Path, nproc: int = 2,
                    timeout: float = 900) -> dict[str, subprocess.CompletedProcess]:
    """`run_train` for several runs of one world size, in one torchrun launch (tests/train_batch_worker.py): the
    ~9 s of a launch's start-up is paid once. `runs` maps a name to (recipe, overrides). Returns the runs that
    finished, by name, as `run_train` would (stdout/stderr: rank 0's); the launch stops at the first failed run, so
    callers run the missing ones with `run_train` and see their failure there."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_dir / "plan.json"
    plan.write_text(json.dumps([{"name": name, "argv": ["train", str(recipe), *overrides]}
                                for name, (recipe, overrides) in runs.items()]))
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(REPO / "tests" / "train_batch_worker.py"), str(plan)]
    with open(plan_dir / "launch.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_session(proc)
    done = {}
    for name, (recipe, overrides) in runs.items():
        result = plan_dir / f"{name}.result.json"
        if result.is_file():
            rec = json.loads(result.read_text())
            done[name] = subprocess.CompletedProcess(["train", str(recipe), *overrides], rec["returncode"],
                                                     rec["stdout"], rec["stderr"])
    return done


class BatchedRuns:
    """Runs of one world size that a test module makes, launched together (`run_train_batch`) when the first of them
    is asked for; a run the launch did not finish runs on its own, as a user would start it."""

    def __init__(self, runs: dict[str, tuple[Path, Sequence[str]]], plan_dir: Path, nproc: int = 2) -> None:
        self.runs, self.plan_dir, self.nproc = runs, plan_dir, nproc
        self.done: Optional[dict[str, subprocess.CompletedProcess]] = None

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        if self.done is None:
            self.done = run_train_batch(self.runs, self.plan_dir, self.nproc)
        recipe, overrides = self.runs[name]
        return self.done.get(name) or run_train(overrides, nproc=self.nproc, recipe=recipe)

    def run_dir(self, name: str) -> Path:
        """The run's directory once it exited 0 (its `run_dir=` override: the last one, as the CLI takes it)."""
        assert_ok(self[name])
        return Path([o for o in self.runs[name][1] if o.startswith("run_dir=")][-1].split("=", 1)[1])


def train_here(overrides: Sequence[str], recipe: Path = TINY_RECIPE, env: Optional[dict] = None
               ) -> subprocess.CompletedProcess:
    """`megafin train` in this process, as `run_train` runs it in a new one (same arguments, same result object):
    for runs whose point is not the process itself (exit by signal, kill, leaked children), where start-up (~6 s of
    imports per process) would dominate the suite. stdout is captured; `env` is set for the run only."""
    import contextlib
    import io

    from megafin.cli import main as megafin_main

    argv = ["train", str(recipe), *overrides]
    saved = {key: os.environ.get(key) for key in env or {}}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = megafin_main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def start_train(overrides: Sequence[str], nproc: int = 1, env: Optional[dict] = None) -> subprocess.Popen:
    """A training run in its own session, so the test can signal or kill it with everything it spawned."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([*train_cmd(nproc), str(TINY_RECIPE), *overrides], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_session(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the run's whole session: the trainer and anything it started (torchrun's ranks are in sessions of their own
    and stop by themselves once their agent is gone: megafin/runtime/parent_watch.py)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=60)


def losses(run_dir: Path) -> dict[int, Optional[float]]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def assert_ok(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    assert proc.returncode == code, f"exit {proc.returncode} (wanted {code})\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def assert_close_to_scale(actual, expected, rel: float, name: str = "") -> None:
    """Every |actual - expected| <= rel * max|expected|, for tensors whose entries straddle zero (gradients): their
    fp32 rounding follows the tensor's largest entries, so neither an entry's own size (rtol) nor a fixed atol
    says what another CPU's kernels will reproduce. NaN anywhere fails."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.detach().double() - expected.detach().double()).abs()
    scale = expected.detach().double().abs().max().item() if expected.numel() else 0.0
    worst = diff.max().item() if diff.numel() else 0.0
    assert worst <= rel * scale, f"{name}: max |actual - expected| {worst:.3g} > {rel:g} x max|expected| ({scale:.3g})"


def to_model_device(batch: dict, model) -> dict:
    """A collated batch with its tensors where the model's parameters are (CUDA on a GPU machine, CPU here)."""
    import torch

    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
