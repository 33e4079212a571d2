"""A real single-node Slurm cluster (munge, slurmctld, slurmd) on loopback in a scratch directory.

Addresses are 127.0.0.1 (SlurmctldHost=host(127.0.0.1), NodeAddr=127.0.0.1), so the host name need not resolve.

Installs Debian's packages when missing (root + apt-get), writes a private slurm.conf on free ports, starts the
daemons in the foreground as our own children and stops them by PID. Also usable by hand:
`python -m tests.slurm.cluster /tmp/slurm-scratch` starts one and waits for Ctrl-C.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "munged"]


class ClusterUnavailable(RuntimeError):
    """Slurm cannot be installed or started on this machine (the fixture skips, or fails under CI=true)."""


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def ensure_installed(log: Path) -> None:
    if all(_which(b) for b in BINARIES):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable(f"Slurm is not installed ({', '.join(PACKAGES)}) and this is not a root Debian "
                                 f"machine with apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(log, "a") as out:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
            if subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode != 0:
                raise ClusterUnavailable(f"{' '.join(cmd)} failed; see {log}")
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise ClusterUnavailable(f"installed {PACKAGES} but {missing} are still missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    return 1024


class Cluster:
    def __init__(self, scratch: Path) -> None:
        self.scratch = Path(scratch)
        self.conf = self.scratch / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 60) -> "Cluster":
        self.scratch.mkdir(parents=True, exist_ok=True)
        ensure_installed(self.scratch / "apt.log")
        self._start_munge()
        self._write_conf()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.scratch / f"{daemon}.out", "w")
            # -D: foreground, so the PID we hold is the daemon's own and stopping it is exact.
            self.procs[daemon] = subprocess.Popen([_which(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  start_new_session=True)
            if daemon == "slurmctld":
                self._wait(lambda: self.run("scontrol", "ping").returncode == 0 and
                           "UP" in self.run("scontrol", "ping").stdout, timeout, "slurmctld to answer ping")
        self._wait(self._node_idle, timeout, "the node to become idle")
        return self

    def _start_munge(self) -> None:
        if self._munge_ok():
            return  # a munged already runs on this machine: use it, never stop it
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            raise ClusterUnavailable(f"{key} is missing (the munge package creates it)")
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        log = open(self.scratch / "munged.out", "w")
        self.procs["munged"] = subprocess.Popen([_which("munged"), "-F"], user="munge", group="munge",
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
        self._wait(self._munge_ok, 20, "munged to answer")

    @staticmethod
    def _munge_ok() -> bool:
        if not _which("munge") or not _which("unmunge"):
            return False
        cred = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        out = subprocess.run([_which("unmunge")], input=cred.stdout, capture_output=True, timeout=10)
        return out.returncode == 0 and b"Success" in out.stdout

    def _write_conf(self) -> None:
        s = self.scratch
        for d in ("state", "spool"):
            (s / d).mkdir(exist_ok=True)
        # At least 4 CPUs declared (config_overrides: slurmd trusts the file) so a job can ask for 3 tasks on a
        # 2-core machine; the tests run one job at a time, so nothing is actually oversubscribed.
        cpus = max(4, os.cpu_count() or 1)
        self.conf.write_text(f"""\
ClusterName=megafin{os.getpid()}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire+1 s before it may start again (default 120): short on this test cluster.
AuthInfo=cred_expire=5
StateSaveLocation={s}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/slurmctld.log
SlurmdLogFile={s}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
KillWait=10
MinJobAge=600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%T")
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {proc.returncode} while waiting for {what}; "
                                             f"see {self.scratch}")
            try:
                if cond():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.3)
        raise ClusterUnavailable(f"timed out after {timeout:.0f}s waiting for {what}; see {self.scratch}")

    # ------------------------------------------------------------------ use
    def run(self, *cmd: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def job_field(self, job_id: int, key: str) -> Optional[str]:
        out = self.run("scontrol", "-o", "show", "job", str(job_id))
        for item in out.stdout.split():
            k, _, v = item.partition("=")
            if k == key:
                return v
        return None

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Cancel our jobs, then stop slurmd, slurmctld, munged (only those we started) by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--user", "root", timeout=10)
                deadline = time.time() + 20
                while time.time() < deadline and self.run("squeue", "-h", timeout=10).stdout.strip():
                    time.sleep(0.5)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill PID` of this script stops the cluster cleanly
    c = Cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/megafin-slurm"))
    try:
        c.start()
        print(f"export SLURM_CONF={c.conf}", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
