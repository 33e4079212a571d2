"""A run_dir has one owner: the lock is exclusive between processes, names its holder, and dies with it; a fresh run
(train.resume=none) refuses an earlier run's checkpoints unless checkpoint.overwrite=true."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from megafin.cli import main as megafin_main
from megafin.config import ConfigError, load_config, validate
from megafin.runtime.run_dir import LOCK_NAME, RunDirBusy, RunDirLock, discard_earlier_checkpoints
from tests.helpers import TINY_RECIPE, data_overrides
from tests.proc_watch import hold_lock_elsewhere


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    holder = hold_lock_elsewhere(tmp_path)
    try:
        with pytest.raises(RunDirBusy) as err:
            RunDirLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since " in message
        assert str(tmp_path / LOCK_NAME) in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The dead holder's text stays in the file (a stale lock file, as a crash or a requeue leaves it); the kernel
    # dropped the lock, so the next run takes it and writes its own name.
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with RunDirLock(tmp_path):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
        # POSIX locks do not exclude their own process, so a second lock in this process is refused explicitly
        # (closing its descriptor would silently drop the first).
        with pytest.raises(RunDirBusy, match="this process"):
            RunDirLock(tmp_path).acquire()
    # Released: another process can take it now.
    again = hold_lock_elsewhere(tmp_path)
    again.kill()
    again.wait(timeout=30)


def _checkpoint(run_dir: Path, step: int) -> None:
    ckpt = run_dir / "checkpoints" / f"step_{step:07d}"
    ckpt.mkdir(parents=True)
    (ckpt / "megafin.json").write_text(json.dumps({"step": step}))
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name)


def _validate(tiny_data, run_dir: Path, *overrides: str) -> None:
    validate(load_config(TINY_RECIPE, [*data_overrides(tiny_data), f"run_dir={run_dir}", *overrides]), world_size=1)


def test_fresh_run_refuses_an_earlier_runs_checkpoints(tiny_data, tmp_path, capsys):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    with pytest.raises(ConfigError) as err:
        _validate(tiny_data, tmp_path, "train.resume=none")
    assert err.value.lines == [
        f"train.resume: none would overwrite the checkpoints in {tmp_path / 'checkpoints'} (step_0000002, "
        f"step_0000004); use train.resume=auto to continue that run, another run_dir, or checkpoint.overwrite=true "
        f"to replace them"]
    # Continuing, or asking to overwrite, is fine; so is a run_dir whose only leftover is an interrupted save.
    _validate(tiny_data, tmp_path, "train.resume=auto")
    _validate(tiny_data, tmp_path, "train.resume=none", "checkpoint.overwrite=true")
    (tmp_path / "fresh" / "checkpoints" / "step_0000002.partial").mkdir(parents=True)
    _validate(tiny_data, tmp_path / "fresh", "train.resume=none")
    # The CLI: one line, exit 2, before any process group.
    code = megafin_main(["train", str(TINY_RECIPE), *data_overrides(tiny_data), f"run_dir={tmp_path}",
                         "train.resume=none"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"megafin: config error: {err.value.lines[0]}"]


def test_overwrite_removes_the_earlier_checkpoints_only_when_asked(tiny_data, tmp_path):
    _checkpoint(tmp_path, 2)
    (tmp_path / "checkpoints" / "step_0000006.partial").mkdir()  # not a checkpoint: left to the manager
    cfg = load_config(TINY_RECIPE, [*data_overrides(tiny_data), f"run_dir={tmp_path}", "train.resume=none"])
    assert discard_earlier_checkpoints(cfg) == 0
    cfg.train.resume = "auto"
    cfg.checkpoint.overwrite = True
    assert discard_earlier_checkpoints(cfg) == 0  # resuming keeps them whatever overwrite says
    cfg.train.resume = "none"
    assert discard_earlier_checkpoints(cfg) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000006.partial"]


def test_a_dead_pid_in_a_held_lock_file_is_not_named_as_the_holder(tmp_path):
    """Between taking the lock and writing its name, the holder's file still holds the previous (dead) holder's
    text: the message must not send the user after that pid."""
    holder = hold_lock_elsewhere(tmp_path)
    try:
        dead = {"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "started": "earlier"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(dead))
        with pytest.raises(RunDirBusy, match=r"another process \(it has not written its pid and host yet\)"):
            RunDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_filesystem_without_locks_warns_and_other_errors_stop_the_run(tmp_path, monkeypatch, capsys):
    import errno

    import megafin.runtime.run_dir as run_dir

    def lockf(errnum):
        def fail(fd, op):
            raise OSError(errnum, os.strerror(errnum))
        return fail

    monkeypatch.setattr(run_dir.fcntl, "lockf", lockf(errno.ENOLCK))
    assert run_dir.lock_run_dir(tmp_path, is_rank0=True) is None
    assert capsys.readouterr().err == (f"megafin: warning: {tmp_path}: this filesystem cannot lock {LOCK_NAME} "
                                       f"(No locks available); a second run on this run_dir would not be stopped\n")
    monkeypatch.setattr(run_dir.fcntl, "lockf", lockf(errno.EIO))
    with pytest.raises(RunDirBusy, match=f"cannot take the lock {tmp_path / LOCK_NAME}: Input/output error"):
        run_dir.lock_run_dir(tmp_path, is_rank0=True)
