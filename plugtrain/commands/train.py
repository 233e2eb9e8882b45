"""``plugtrain train SPEC... [--set K=V] [--resume auto|PATH] [--overwrite] [--dry-run]``: a queue of training runs.

Each spec is trained by the engine, :func:`plugtrain.core.runtime.session.run` (plan, build, pre-flight, run
directory, banner, training with signals turned into a checkpoint and a clean stop, summary); this command prints
what it returns or raises. A failing spec is reported in one message and the queue goes on; the highest exit code
wins; a signal stops the queue.

Exit codes, by the type of what the engine raised: 0 success; 2 bad input (:class:`PlugtrainError`: spec, data,
CLI, checkpoint) — before training with nothing written; a data fault found while training (:class:`DataFault`,
``data.on_error = "raise"``) with ``last.pt`` at the last completed step, to fix and continue with ``--resume
auto``; 1 a run that failed while training (:class:`TrainingFailed`, e.g. :class:`NumericalFault`: a NaN loss) or
an unexpected error; 128 + signum (143 / 130) a run stopped by SIGTERM / SIGINT (:class:`Stopped`) after writing
``last.pt`` (``--resume auto`` continues it exactly).

``dry_run`` builds everything, runs one batch forward and backward, prints shapes and parameter counts and writes
nothing under ``output_dir``: augmented samples (``augmentations.save_samples``) go to a fresh temporary directory
whose path is printed.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, Stopped
from plugtrain.core.runtime import jobs, session


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, resume: str | None = None, overwrite: bool = False,
        dry_run: bool = False) -> int:
    """Train each spec in order (:func:`~plugtrain.core.runtime.jobs.run_queue`): a failing spec is reported in one
    message and the queue goes on; the highest exit code wins."""
    paths, overrides = list(specs), list(overrides)
    if resume and len(paths) > 1 and resume != "auto":
        raise PlugtrainError("--resume PATH names one checkpoint: give one spec (or use --resume auto)")

    def one(path: str) -> int:
        result = jobs.run_job(jobs.Job(path, overrides), resume=resume, overwrite=overwrite, dry_run=dry_run)
        if result.dry_run is not None:
            _print_dry_run(result)
        return result.exit_code

    return jobs.run_queue([(path, functools.partial(one, path)) for path in paths], _interrupted)


def _interrupted(exc: Stopped) -> str:
    """What a stopped run says: where it stopped and the command that continues it (``--resume auto`` needs a
    ``last.pt``; without one only ``--overwrite`` starts the run again)."""
    name = signal.Signals(exc.signum).name
    if exc.at_once:
        if exc.checkpoint is None:
            return (f"interrupted by {name} at step {exc.step}, at once, before any checkpoint was written; start "
                    "the run again with --overwrite")
        return (f"interrupted by {name} at step {exc.step}, at once; the last checkpoint is {exc.checkpoint} "
                "(the steps after it are redone): continue with --resume auto")
    where = f"; checkpoint {exc.checkpoint}" if exc.checkpoint else ""
    return f"interrupted by {name} at step {exc.step}{where}; continue with --resume auto"


def _print_dry_run(result: session.RunResult) -> None:
    if result.samples is not None:
        console.echo(f"augmented samples: {result.samples}")
    console.table(f"dry run: {result.name} (nothing written)", ["what", "value"], result.dry_run or [])
