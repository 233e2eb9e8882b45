"""A queue of training runs: the specs of ``plugtrain train A B``, the K folds of ``train --folds K`` and of a sweep
trial's cross-validation.

Two levels, one loop each, shared by every caller:

* :func:`run_jobs` runs a list of :class:`Job` (a spec, its overrides, and for cross-validation its fold: the run
  directory is the spec's ``run.name``) through the engine, :func:`.session.run`, in order, and collects their
  :class:`~.session.RunResult`; it raises what a job raises (a fold that fails fails its cross-validation).
* :func:`run_queue` runs the entries of the command line (a spec: one run, or its folds and their summary) the way
  ``plugtrain train`` promises: a failing entry is reported in one message and the queue goes on, the highest exit
  code wins, a stop signal ends the queue, and the process group is torn down at the end.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, Stopped, debug, first_line
from plugtrain.core.runtime.session import RunResult


@attrs.frozen
class Job:
    """One run of a queue: the spec at ``path`` with ``overrides`` (``--set`` texts), and ``fold = (k, K)`` for fold
    ``k`` of a cross-validation (given as ``data.fold = [k, K]``; the run writes ``fold.json``)."""

    path: str
    overrides: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    fold: tuple[int, int] | None = None


class _FoldRecord:
    """Writes the fold's ``fold.json`` into its run directory when training starts."""

    def __init__(self, fold: tuple[int, int]) -> None:
        self.fold = fold

    def on_train_start(self, run: Any) -> None:  # run: the callback's RunView
        if run.run_dir is not None and run.is_main:
            write_json(Path(run.run_dir) / "fold.json",
                       {"fold": self.fold[0], "folds": self.fold[1], "seed": run.spec.run.seed,
                        "train_samples": run.train_samples, "val_samples": run.val_samples,
                        "val": "fold of the train split (validation transforms)"})


def run_job(job: Job, *, resume: str | None = None, overwrite: bool = False, dry_run: bool = False,
            callbacks: Sequence[Any] = ()) -> RunResult:
    """Train one job with the engine (``callbacks`` after the spec's own); raises what the engine raises."""
    from plugtrain.core.runtime import session

    extra = [f"data.fold=[{job.fold[0]}, {job.fold[1]}]"] if job.fold is not None else []
    own = [_FoldRecord(job.fold)] if job.fold is not None else []
    result = session.run(job.path, [*job.overrides, *extra], resume=resume, overwrite=overwrite, dry_run=dry_run,
                         callbacks=[*callbacks, *own])
    _free_device_memory()
    return attrs.evolve(result, fold=job.fold)


def run_jobs(jobs: Sequence[Job], *, resume: str | None = None, overwrite: bool = False,
             callbacks_for: Callable[[Job], Sequence[Any]] | None = None,
             before: Callable[[Job], None] | None = None,
             after: Callable[[Job, RunResult], None] | None = None) -> list[RunResult]:
    """Run ``jobs`` in order and return their results. ``before(job)`` / ``after(job, result)`` run around each (a
    sweep stops a pruned trial in ``after`` by raising); ``callbacks_for(job)`` gives a job's extra callbacks."""
    results: list[RunResult] = []
    for job in jobs:
        if before is not None:
            before(job)
        result = run_job(job, resume=resume, overwrite=overwrite,
                         callbacks=callbacks_for(job) if callbacks_for is not None else ())
        results.append(result)
        if after is not None:
            after(job, result)
    return results


def run_queue(entries: Sequence[tuple[str, Callable[[], int]]], interrupted: Callable[[Stopped], str]) -> int:
    """Run each ``(label, run)`` entry in order: ``run()`` returns its exit code; what it raises is reported in one
    line (``PLUGTRAIN_DEBUG=1``: with the traceback) and the queue goes on; :class:`Stopped` prints
    ``interrupted(exc)`` and ends the queue with 128 + signum. Returns the highest exit code."""
    from plugtrain.core.runtime import distributed

    codes: list[int] = []
    many = len(entries) > 1
    try:
        for label, run in entries:
            prefix = f"{label}: " if many else ""
            try:
                codes.append(run())
            except Stopped as exc:
                console.echo(interrupted(exc))
                return exc.exit_code
            except PlugtrainError as exc:
                if debug():
                    traceback.print_exc()
                console.error(prefix + str(exc).removeprefix("plugtrain: error: "))
                codes.append(exc.exit_code)
            except Exception as exc:  # noqa: BLE001 - a bug or a library error: one line, traceback on demand
                if debug():
                    traceback.print_exc()
                console.error(f"{prefix}{type(exc).__name__}: {first_line(exc)} "
                              "(set PLUGTRAIN_DEBUG=1 for the traceback)")
                codes.append(1)
    finally:
        distributed.teardown(synchronize=bool(codes) and not any(codes) and len(codes) == len(entries))
    if many:
        failed = sum(1 for c in codes if c)
        if failed:
            console.echo(f"{failed} of {len(entries)} specs failed")
    return max(codes, default=0)


def _free_device_memory() -> None:
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, written atomically."""
    from plugtrain.core.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
