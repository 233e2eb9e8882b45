"""``plugtrain submit SPEC [--set K=V] --time HH:MM:SS [--nodes N] [--gpus-per-node G] [--partition P] [--account A]
[--signal USR1@90] [--launch FILE] [--resume auto|PATH] [--overwrite] [--dry-run]``: train on a SLURM cluster.

Checks everything before submitting (the spec, the run directory as ``train`` would, the options, whether each start
of the job can reach a checkpoint before the warning (:mod:`plugtrain.slurm.budget`), then the cluster:
partition, GPUs, MaxTime, ``sbatch --test-only``), so that a bad option is one message (exit 2) and no job; then
submits the script of :func:`plugtrain.slurm.job.script` and prints the job id, the run directory, the log and how to
follow and cancel the job. ``--dry-run`` prints the script instead of submitting it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError

#: The job options the command line passes on (the launch file's [slurm] table may hold more).
FLAGS = ("time", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem", "partition", "account", "signal",
         "max_requeues")


def run(spec: str, overrides: Sequence[str] = (), *, launch: str | None = None, resume: str | None = None,
        overwrite: bool = False, dry_run: bool = False, **flags: Any) -> int:
    """Check and submit (or print, ``dry_run``) the job that trains ``spec``; ``flags`` are the job's options
    (:class:`plugtrain.slurm.job.JobOptions`), over the launch file's ``[slurm]`` table."""
    from plugtrain.core.runtime import rundir
    from plugtrain.core.spec import load_spec
    from plugtrain.slurm import budget, job

    opts = job.options(launch, **flags)
    s = load_spec(spec, list(overrides))
    run_dir = rundir.run_dir_for(s.run.output_dir, s.run.name).absolute()
    plan = rundir.plan(run_dir, resume, overwrite)  # an existing run without --resume / --overwrite: refused now
    notes = job.check_budget(opts, budget.measured(budget.history_of(plan)))
    log_dir = run_dir.parent / "slurm-logs"
    name = s.run.name.replace("/", "-")
    text = job.script(opts, Path(spec).absolute(), list(overrides), name=name, log_dir=log_dir,
                      workdir=Path(os.getcwd()), resume=resume, overwrite=overwrite, notes=notes)
    job_id = dispatch(opts, text, dry_run, log_dir)
    if job_id is None:
        return 0
    log = log_dir / f"{name}-{job_id}.out"
    console.echo(f"submitted job {job_id}: run dir {run_dir}\n  follow: tail -f {log}   (squeue -j {job_id})\n"
                 f"  cancel: scancel {job_id}   (continue it later with: plugtrain submit {spec} ... --resume auto)")
    return 0


def add_job_arguments(parser: Any) -> None:
    """The job options of :data:`FLAGS` and ``--launch`` (``submit`` and ``sweep --submit`` take the same)."""
    parser.add_argument("--launch", metavar="FILE", help="a launch file whose [slurm] table holds the job's options")
    parser.add_argument("--time", metavar="HH:MM:SS", help="the job's time limit")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int, help="one task per GPU")
    parser.add_argument("--tasks-per-node", type=int, help="default: one per GPU (one on a CPU-only job)")
    parser.add_argument("--cpus-per-task", type=int)
    parser.add_argument("--mem")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--signal", metavar="NAME@SECONDS", help="the warning before the time limit (default USR1@90)")
    parser.add_argument("--max-requeues", type=int, help="requeue the job at most this often (default 20)")


def dispatch(opts: Any, text: str, dry_run: bool, log_dir: Path) -> str | None:
    """Check the job against the cluster, then submit it (its id) or, ``dry_run``, print the script (``None``)."""
    from plugtrain.slurm import cluster

    unchecked = None
    if not cluster.available():
        unchecked = "sbatch, sinfo and scontrol are not on the PATH"
    else:
        try:
            cluster.check(opts, text)
        except cluster.Unreachable as exc:
            unchecked = str(exc)
    if unchecked and not dry_run:
        raise PlugtrainError(f"submit: {unchecked}; run it on the cluster's login node (or print the script with "
                             "--dry-run)")
    if dry_run:
        if unchecked:
            print(f"note: {unchecked}: the partition, GPUs and time limit were not checked against a cluster",
                  file=sys.stderr)  # stdout holds the script alone
        print(text, end="")
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return cluster.submit(text)
