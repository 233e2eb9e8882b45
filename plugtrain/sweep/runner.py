"""One ordinary training run, in this process, with extra callbacks and (for cross-validation) one fold.

:func:`train` is :func:`plugtrain.core.runtime.jobs.run_job`: the training engine every entry point calls
(:func:`plugtrain.core.runtime.session.run`: run directory, banner, resume, preflight, signals, summary, every
check), so a trial or a fold is a run like any other (``spec.toml``, ``env.json``, ``metrics.csv``, ``tb/``,
checkpoints) and returns the same :class:`~plugtrain.core.runtime.session.RunResult`, with ``callbacks`` run after
the spec's own (a sweep's reporter: ``on_epoch_end`` reports the objective to Optuna and calls
``run.request_stop`` when the pruner says so) and ``fold = (k, K)`` given as ``data.fold = [k, K]`` (train on the
other folds of the train split, validate on fold ``k``: :func:`plugtrain.core.runtime.folds.fold_split`).
"""

from __future__ import annotations

from typing import Any

from plugtrain.core.runtime import jobs
from plugtrain.core.runtime.session import RunResult

__all__ = ["RunResult", "train"]


def train(path: str, overrides: list[str], *, resume: str | None = None, overwrite: bool = False,
          callbacks: list[Any] | tuple = (), fold: tuple[int, int] | None = None) -> RunResult:
    """Train the spec at ``path`` with ``overrides`` as ``plugtrain train`` does; raises what the engine raises
    (:class:`~plugtrain.core.errors.PlugtrainError`, ``TrainingFailed``, ``Stopped``)."""
    return jobs.run_job(jobs.Job(path, overrides, fold), resume=resume, overwrite=overwrite, callbacks=callbacks)
