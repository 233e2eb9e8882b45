"""A real one-node SLURM cluster for tests/slurm (import the ``slurm`` fixture from here): munged with its own key
and socket, slurmctld and slurmd in the foreground, configured in a temporary directory on free ports, stopped
afterwards. Skipped only where the Debian packages slurm-wlm and munge are not installed (.ci/run installs them)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "srun")

SLURM_CONF = """\
ClusterName=plugtrain-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MpiDefault=none
SchedulerParameters=sched_interval=1
FirstJobId={first_job}
MinJobAge=600
KillWait=10
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=02:00:00 State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The running cluster: ``env`` is the environment for SLURM's client commands (``SLURM_CONF``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {r.stderr or r.stdout}")
        return r

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of ``job_id`` as a dict."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait(self, job_id: str, timeout: float = 240, on_running=None) -> dict[str, str]:  # noqa: ANN001
        """Wait until the job ends (COMPLETED, FAILED, ...). A requeued job waits out SLURM's fixed delay before it
        may start again (its BeginTime, about two minutes): the test lets it start at once. ``on_running(job)`` is
        called while the job runs."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.job(job_id)
            state = job.get("JobState", "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                         "DEADLINE", "PREEMPTED"):
                return job
            if state == "PENDING" and job.get("Reason") == "BeginTime":
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            elif state == "RUNNING" and on_running is not None:
                on_running(job)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end in {timeout} s: {self.job(job_id)}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "log").glob("*")))

    def start(self) -> None:
        root = self.root
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port(), d_port=free_port(),
                                               first_job=random.randint(1000, 900000)), encoding="utf-8")
        sock = root / "munge" / "socket"
        self._spawn("munged", "-F", "-f", f"--socket={sock}", f"--key-file={key}",
                    f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munge' / 'pid'}",
                    f"--seed-file={root / 'munge' / 'seed'}")
        self._until(lambda: sock.exists(), "munged to open its socket")
        self._spawn("slurmctld", "-D", "-i")
        self._spawn("slurmd", "-D", "-N", "localhost")
        self._until(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle",
                    "the node to be idle")

    def _spawn(self, *cmd: str) -> None:
        log = open(self.root / "log" / f"{cmd[0]}.out", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        log.close()

    def _until(self, ready, what: str, timeout: float = 60) -> None:  # noqa: ANN001
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for {what}\n"
                                       f"{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}\n{self.logs()}")

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and munged (the processes started here, by id)."""
        if self.procs:
            self.run("scancel", "--full", "--user=root", check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=15)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A one-node SLURM cluster (2 CPUs, partition ``debug``) for the session; see :class:`Cluster`."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here ({', '.join(missing)} missing: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (SlurmdUser=root); run the SLURM tests as root")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
