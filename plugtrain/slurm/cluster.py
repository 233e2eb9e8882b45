"""What plugtrain asks SLURM: the partitions (``sinfo``, ``scontrol show partition``), whether a job fits one
(checked before submission, so that a bad option is one message and no job), and the submission itself."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from plugtrain.core.errors import PlugtrainError, did_you_mean, first_line
from plugtrain.slurm.job import JobOptions, parse_time


class Unreachable(PlugtrainError):
    """SLURM's commands are here but no controller answers (no slurm.conf, a controller that is down)."""


def available() -> bool:
    """True where the SLURM client commands are on the PATH (a login node)."""
    return all(shutil.which(c) for c in ("sbatch", "sinfo", "scontrol"))


def _call(*cmd: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PlugtrainError(f"{cmd[0]}: {first_line(exc)} (is SLURM reachable from here?)") from None


def partitions() -> tuple[list[str], str | None]:
    """The partitions ``sinfo`` shows and the default one (marked ``*``)."""
    r = _call("sinfo", "-h", "-o", "%P")
    if r.returncode != 0:
        said = first_line(r.stderr or r.stdout).removeprefix("sinfo: ") or "failed"
        raise Unreachable(f"sinfo: {said} (is SLURM reachable from here?)")
    names, default = [], None
    for line in r.stdout.split():
        name = line.rstrip("*")
        if line.endswith("*"):
            default = name
        if name not in names:
            names.append(name)
    return names, default


def partition_info(name: str) -> dict[str, str]:
    """``scontrol show partition NAME`` as ``{key: value}``."""
    r = _call("scontrol", "show", "partition", "-o", name)
    if r.returncode != 0:
        raise PlugtrainError(f"scontrol show partition {name}: {first_line(r.stderr or r.stdout)}")
    return dict(item.split("=", 1) for item in r.stdout.split() if "=" in item)


def gres(name: str) -> list[str]:
    """The generic resources of the partition's nodes (``sinfo -o %G``), e.g. ``["gpu:a100:4"]``; ``[]`` for none."""
    r = _call("sinfo", "-h", "-p", name, "-o", "%G")
    return [g for line in r.stdout.split() for g in line.split(",") if g and g != "(null)"]


def _gpus(entries: list[str]) -> int:
    """The most GPUs one node of the partition has (``gpu:TYPE:N`` or ``gpu:N``, an ``(S:..)`` suffix dropped)."""
    most = 0
    for g in entries:
        parts = g.split("(")[0].split(":")
        if parts[0] == "gpu":
            most = max(most, int(parts[-1]) if parts[-1].isdigit() else 1)
    return most


def check(opts: JobOptions, script_text: str) -> str:
    """Refuse, before anything is submitted, a job the cluster cannot run: an unknown partition, GPUs on a CPU-only
    partition, more GPUs or nodes than it has, a time limit over its MaxTime; then ``sbatch --test-only`` for the
    rest (accounts, QOS, memory). Returns the partition the job goes to."""
    names, default = partitions()
    name = opts.partition or default
    if name is None:
        raise PlugtrainError(f"the cluster has no default partition: give --partition (one of {', '.join(names)})")
    if name not in names:
        raise PlugtrainError(f"--partition {name}: no such partition on this cluster.{did_you_mean(name, names)} "
                             f"Partitions: {', '.join(names) or 'none'}")
    info = partition_info(name)
    if opts.gpus_per_node:
        most = _gpus(gres(name))
        if most == 0:
            raise PlugtrainError(f"--gpus-per-node {opts.gpus_per_node}: partition {name} has no GPUs (its nodes "
                                 "declare no gres/gpu); choose a GPU partition or leave --gpus-per-node out for a "
                                 "CPU job")
        if opts.gpus_per_node > most:
            raise PlugtrainError(f"--gpus-per-node {opts.gpus_per_node}: the nodes of partition {name} have at most "
                                 f"{most} GPU(s)")
    total = info.get("TotalNodes", "")
    if total.isdigit() and opts.nodes > int(total):
        raise PlugtrainError(f"--nodes {opts.nodes}: partition {name} has {total} node(s)")
    max_time = info.get("MaxTime", "UNLIMITED")
    if max_time not in ("UNLIMITED", "INFINITE", "NONE") and opts.seconds > parse_time(max_time, "MaxTime"):
        raise PlugtrainError(f"--time {opts.time}: longer than partition {name}'s limit MaxTime={max_time}")
    r = _call("sbatch", "--test-only", stdin=script_text)
    if r.returncode != 0:
        text = (r.stderr or r.stdout).strip().splitlines()
        raise PlugtrainError(f"sbatch refuses the job: {text[-1] if text else 'no reason given'}")
    return name


def submit(script_text: str) -> str:
    """``sbatch --parsable`` with the script on stdin; returns the job id."""
    r = _call("sbatch", "--parsable", stdin=script_text)
    if r.returncode != 0:
        text = (r.stderr or r.stdout).strip().splitlines()
        raise PlugtrainError(f"sbatch: {text[-1] if text else 'failed'}")
    return r.stdout.strip().split(";")[0]


def requeue(job_id: str) -> tuple[bool, str]:
    """``scontrol requeue JOB``: (done, what scontrol said)."""
    r = _call("scontrol", "requeue", job_id)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def job_state(job_id: str) -> dict[str, Any]:
    """``scontrol show job -o JOB`` as ``{key: value}`` (empty when SLURM no longer knows the job)."""
    r = _call("scontrol", "show", "job", "-o", job_id)
    if r.returncode != 0:
        return {}
    return dict(item.split("=", 1) for item in r.stdout.split() if "=" in item)
