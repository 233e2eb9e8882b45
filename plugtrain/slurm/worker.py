"""One task of a ``plugtrain submit`` job (``srun python -m plugtrain.slurm.worker [...] -- SPEC [--set ...]``).

It sets the torch.distributed environment from SLURM's variables (``SLURM_PROCID`` -> ``RANK``, ``SLURM_NTASKS`` ->
``WORLD_SIZE``, ``SLURM_LOCALID`` -> ``LOCAL_RANK``; the script exports ``MASTER_ADDR`` / ``MASTER_PORT``), trains
the spec with the engine, and when the warning signal or SIGTERM stopped the run at a step boundary (``last.pt``
written), rank 0 requeues the job. A requeued job (``SLURM_RESTART_COUNT`` > 0) continues from ``last.pt`` by
itself. A finished run is never requeued, nor a run that failed or was stopped by SIGINT; a job stopped
:data:`~plugtrain.slurm.job.STALL_LIMIT` times in a row at the same step, or requeued ``--max-requeues`` times in
all, is not requeued again, and the log says why.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.atomic import write_atomic
from plugtrain.core.errors import PlugtrainError, Stopped, debug, first_line
from plugtrain.slurm.job import DEFAULT_MAX_REQUEUES, STALL_LIMIT

_STARTED = time.monotonic()  # the task's start, before torch is imported: its startup is measured from here

#: The record of the job's stops, next to the run's files: ``{"job": id, "stops": [[restart, step], ...]}``.
STOPS_FILE = "slurm-stops.json"


def distributed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables that SLURM's task variables imply (none where ``RANK`` is set already, e.g.
    torchrun per node, or outside an ``srun`` task)."""
    e = os.environ if environ is None else environ
    if "RANK" in e or "SLURM_PROCID" not in e:
        return {}
    ntasks = int(e.get("SLURM_NTASKS") or 1)
    nodes = int(e.get("SLURM_NNODES") or 1)
    out = {"RANK": e["SLURM_PROCID"], "WORLD_SIZE": str(ntasks), "LOCAL_RANK": e.get("SLURM_LOCALID", "0"),
           "LOCAL_WORLD_SIZE": str(max(ntasks // max(nodes, 1), 1))}
    if ntasks > 1:
        out.setdefault("MASTER_ADDR", e.get("MASTER_ADDR") or "127.0.0.1")
        out.setdefault("MASTER_PORT", e.get("MASTER_PORT") or str(20000 + int(e.get("SLURM_JOB_ID") or 0) % 20000))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m plugtrain.slurm.worker")
    p.add_argument("--max-requeues", type=int, default=DEFAULT_MAX_REQUEUES)
    p.add_argument("--resume")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("spec")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = _parser().parse_args([a for a in argv if a != "--"])
    os.environ.update(distributed_env())
    from plugtrain.core.runtime import distributed, session

    session.hold_stop_signals()  # a signal while the run is being built stops it at its first step boundary
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    job = os.environ.get("SLURM_JOB_ID", "")
    resume, overwrite = args.resume, args.overwrite
    code = 1
    try:
        if restart:
            resume, overwrite = _restart_mode(args.spec, args.overrides, job, restart)
        result = session.run(args.spec, args.overrides, resume=resume, overwrite=overwrite,
                             callbacks=[StartupRecord(job, restart)])
        code = result.exit_code
        return code
    except Stopped as exc:
        code = exc.exit_code
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # rank 0 says what happens next
        requeued = _after_stop(exc, job, restart, args.max_requeues)
        return 0 if requeued else exc.exit_code
    except PlugtrainError as exc:
        if debug():
            traceback.print_exc()
        console.error(str(exc).removeprefix("plugtrain: error: "))
        code = exc.exit_code
        return code
    except Exception as exc:  # noqa: BLE001 - a bug or a library error: one line, traceback on demand
        if debug():
            traceback.print_exc()
        console.error(f"{type(exc).__name__}: {first_line(exc)} (set PLUGTRAIN_DEBUG=1 for the traceback)")
        return 1
    finally:
        distributed.teardown(synchronize=code == 0)


class StartupRecord:
    """A callback that records (rank 0) how long this task took from its start to the run's first step, in the
    run's :data:`plugtrain.slurm.budget.STARTS_FILE`: what ``submit --resume`` checks a new time limit against."""

    def __init__(self, job: str, restart: int) -> None:
        self.job, self.restart = job, restart

    def on_train_start(self, run: Any) -> None:
        from plugtrain.slurm import budget

        if run.is_main and run.run_dir is not None:
            budget.record_start(run.run_dir, self.job, self.restart, time.monotonic() - _STARTED)


def _restart_mode(spec: str, overrides: list[str], job: str, restart: int) -> tuple[str | None, bool]:
    """How a requeued job starts again: from ``last.pt`` when the first start wrote one, else from scratch over
    what the first start of this job left (``submit`` refused an existing run directory without --resume or
    --overwrite, so that is the job's own)."""
    from plugtrain.core.runtime import rundir
    from plugtrain.core.spec import load_spec

    s = load_spec(spec, list(overrides))
    run_dir = rundir.run_dir_for(s.run.output_dir, s.run.name)
    last = run_dir / rundir.CHECKPOINTS / "last.pt"
    if last.is_file():
        console.echo(f"slurm: job {job} restart {restart}: continuing from {last}")
        return "auto", False
    console.echo(f"slurm: job {job} restart {restart}: no last.pt in {run_dir}; starting the run again")
    return None, True


def _after_stop(exc: Stopped, job: str, restart: int, max_requeues: int) -> bool:
    """Rank 0, after a run stopped by a signal: requeue the job unless a limit says otherwise; say which."""
    from plugtrain.slurm import cluster

    name = signal.Signals(exc.signum).name
    where = f"stopped by {name} at step {exc.step}"
    if exc.checkpoint is None:
        console.echo(f"slurm: {where} before any checkpoint was written")
    stalls = _record_stop(Path(exc.checkpoint).parent.parent, job, restart, exc.step) if exc.checkpoint else 1
    if not job:
        console.echo(f"slurm: {where}; not in a SLURM job, nothing to requeue")
        return False
    if exc.signum == signal.SIGINT:  # someone asked this job to stop, not the scheduler
        console.echo(f"slurm: {where}; not requeued (SIGINT stops the job; the warning signal and SIGTERM requeue "
                     "it); continue with `plugtrain submit ... --resume auto`")
        return False
    if restart >= max_requeues:
        console.echo(f"slurm: {where}; NOT requeued: job {job} was requeued {restart} time(s) already "
                     f"(--max-requeues {max_requeues}); continue it with a new `plugtrain submit ... --resume auto`")
        return False
    if stalls >= STALL_LIMIT:
        console.echo(f"slurm: {where}; NOT requeued: the job stopped {stalls} times in a row at this step without "
                     f"progress (limit {STALL_LIMIT}); look at the log, then continue with `plugtrain submit ... "
                     "--resume auto`")
        return False
    done, said = cluster.requeue(job)
    if not done:
        console.echo(f"slurm: {where}; requeue of job {job} failed: {said or 'no reason given'}")
        return False
    console.echo(f"slurm: {where}; last.pt written; requeued job {job} (requeue {restart + 1} of at most "
                 f"{max_requeues}); it continues from last.pt when it starts again")
    return True


def _record_stop(run_dir: Path, job: str, restart: int, step: int) -> int:
    """Add this stop to :data:`STOPS_FILE`; return how many stops in a row of this job were at ``step``."""
    path = run_dir / STOPS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    stops = data.get("stops", []) if isinstance(data, dict) and data.get("job") == job else []
    stops.append([restart, step])
    try:
        write_atomic(path, json.dumps({"job": job, "stops": stops}))
    except OSError as exc:
        console.echo(f"slurm: cannot record the stop in {path}: {exc.strerror or exc}")
    same = 0
    for _, s in reversed(stops):
        if s != step:
            break
        same += 1
    return same


if __name__ == "__main__":
    raise SystemExit(main())
