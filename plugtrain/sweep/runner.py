"""One ordinary training run, in this process, with extra callbacks and (for cross-validation) one fold.

:func:`train` is the training engine every entry point calls (:func:`plugtrain.core.runtime.session.run`: run
directory, banner, resume, preflight, signals, summary, every check), so a trial or a fold is a run like any other
(``spec.toml``, ``env.json``, ``metrics.csv``, ``tb/``, checkpoints) and returns the same
:class:`~plugtrain.core.runtime.session.RunResult`, with ``callbacks`` run after the spec's own (a sweep's reporter:
``on_epoch_end`` reports the objective to Optuna and calls ``trainer.request_stop`` when the pruner says so) and
``fold = (k, K)`` given as ``data.fold = [k, K]`` (train on the other folds of the train split, validate on fold
``k``: :func:`plugtrain.core.runtime.folds.fold_split`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.runtime.session import RunResult

__all__ = ["RunResult", "train"]


class _FoldRecord:
    """Writes the fold's ``fold.json`` into its run directory when training starts."""

    def __init__(self, fold: tuple[int, int]) -> None:
        self.fold = fold

    def on_train_start(self, run: Any) -> None:  # run: the callback's RunView
        if run.run_dir is not None and run.is_main:
            _write_json(Path(run.run_dir) / "fold.json",
                        {"fold": self.fold[0], "folds": self.fold[1], "seed": run.spec.run.seed,
                         "train_samples": run.train_samples, "val_samples": run.val_samples,
                         "val": "fold of the train split (validation transforms)"})


def train(path: str, overrides: list[str], *, resume: str | None = None, overwrite: bool = False,
          callbacks: list[Any] | tuple = (), fold: tuple[int, int] | None = None) -> RunResult:
    """Train the spec at ``path`` with ``overrides`` as ``plugtrain train`` does; raises what the engine raises
    (:class:`~plugtrain.core.errors.PlugtrainError`, ``TrainingFailed``, ``Stopped``)."""
    from plugtrain.core.runtime import session

    extra = [f"data.fold=[{fold[0]}, {fold[1]}]"] if fold is not None else []
    own = [_FoldRecord(fold)] if fold is not None else []
    result = session.run(path, [*overrides, *extra], resume=resume, overwrite=overwrite, callbacks=[*callbacks, *own])
    _free_device_memory()
    return attrs.evolve(result, fold=fold)


def _free_device_memory() -> None:
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write_json(path: Path, data: Any) -> None:
    from plugtrain.core.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
