"""One ordinary training run, in this process, with extra callbacks and (for cross-validation) one fold.

:func:`train` is ``plugtrain train``'s own :func:`~plugtrain.commands.train.train_one` (run directory, banner,
resume, preflight, signals, summary, every check), so a trial or a fold is a run like any other (``spec.toml``,
``env.json``, ``metrics.csv``, ``tb/``, checkpoints), with ``callbacks`` run after the spec's own (a sweep's
reporter: ``on_epoch_end`` reports the objective to Optuna and calls ``trainer.request_stop`` when the pruner says
so) and ``fold = (k, K)`` given as ``data.fold = [k, K]`` (train on the other folds of the train split, validate on
fold ``k``: :func:`plugtrain.core.runtime.folds.fold_split`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError


@attrs.define
class RunResult:
    """What a finished run leaves for a sweep or a cross-validation."""

    run_dir: Path
    history: list[dict[str, float]]
    final: dict[str, float]
    epochs: int  # epochs completed
    stop_reason: str | None
    seconds: float
    fold: tuple[int, int] | None = None

    def best(self, metric: str, mode: str) -> tuple[int, dict[str, float]] | None:
        """``(epoch, metrics row)`` of the epoch where ``metric`` was best (the first of equals), or ``None``."""
        import math

        best: tuple[int, dict[str, float]] | None = None
        for row in self.history:
            value = row.get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if best is None or (value > best[1][metric] if mode == "max" else value < best[1][metric]):
                best = (int(row.get("epoch", 0)), row)
        return best


class _Capture:
    """The last callback of the run: what the run leaves, read from the trainer at its end."""

    def __init__(self, fold: tuple[int, int] | None) -> None:
        self.fold = fold
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}
        self.epochs = 0
        self.stop_reason: str | None = None
        self.run_dir: Path | None = None

    def on_train_start(self, trainer: Any) -> None:
        self.run_dir = trainer.run_dir
        if self.fold is not None and trainer.run_dir is not None and trainer.dist.is_main:
            _write_json(Path(trainer.run_dir) / "fold.json",
                        {"fold": self.fold[0], "folds": self.fold[1], "seed": trainer.spec.run.seed,
                         "train_samples": len(trainer.built.train_data), "val_samples": len(trainer.built.val_data),
                         "val": "fold of the train split (validation transforms)"})

    def on_train_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.history = [dict(h) for h in trainer.history]
        self.final = dict(metrics)
        self.epochs = int(trainer.epoch)
        self.stop_reason = trainer.stop_reason
        self.run_dir = trainer.run_dir


def train(path: str, overrides: list[str], *, resume: str | None = None, overwrite: bool = False,
          callbacks: list[Any] | tuple = (), fold: tuple[int, int] | None = None) -> RunResult:
    """Train the spec at ``path`` with ``overrides`` as ``plugtrain train`` does; raises what the train command would
    report (:class:`PlugtrainError`, ``TrainingFailed``, ``Interrupted``)."""
    import time

    from plugtrain.commands import train as train_cmd

    t0 = time.monotonic()
    capture = _Capture(fold)
    extra = [f"data.fold=[{fold[0]}, {fold[1]}]"] if fold is not None else []
    train_cmd.train_one(path, [*overrides, *extra], resume, overwrite, extra_callbacks=[*callbacks, capture])
    if capture.run_dir is None:
        raise PlugtrainError(f"{path}: the run ended before training started")
    result = RunResult(run_dir=Path(capture.run_dir), history=capture.history, final=capture.final,
                       epochs=capture.epochs, stop_reason=capture.stop_reason, seconds=time.monotonic() - t0,
                       fold=fold)
    _free_device_memory()
    return result


def _free_device_memory() -> None:
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write_json(path: Path, data: Any) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
