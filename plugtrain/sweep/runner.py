"""One ordinary training run, in this process, with extra callbacks and (for cross-validation) one fold.

:func:`train` is ``plugtrain train``'s own ``_train_one`` (:mod:`plugtrain.commands.train`: run directory, banner,
resume, preflight, signals, summary, every check), so a trial or a fold is a run like any other (``spec.toml``,
``env.json``, ``metrics.csv``, ``tb/``, checkpoints), with two additions its API does not offer yet:

* ``callbacks``: objects appended to the callbacks the spec builds (a sweep's reporter: ``on_epoch_end`` reports
  the objective to Optuna and calls ``trainer.request_stop`` when the pruner says so);
* ``fold = (k, K)``: train on the other folds of the train split and validate on fold ``k``
  (:func:`plugtrain.core.runtime.folds.fold_split`), applied between building and training with the runtime's own
  pieces (``build_run(purpose="eval")``, new ``AugmentedDataset`` views, ``build_training``).

Both are put in by wrapping ``plugtrain.core.runtime.build.build_run`` for the duration of the call (one run at a
time per process, as a sweep worker runs). Once ``commands/train.py`` takes ``extra_callbacks`` and the spec model
has ``[data] fold`` (see the issue 16 notes), :func:`train` becomes ``train_one(path, overrides + ['data.fold=[k,
K]'], extra_callbacks=...)`` and the wrapper goes.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError

_LOCK = threading.Lock()


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


def apply_fold(built: Any, fold: int, folds: int) -> tuple[int, int]:
    """Make ``built`` (from ``build_run(purpose="eval")``) train on the folds other than ``fold`` of its train split
    and validate on ``fold`` (with the validation transforms). Returns ``(train, val)`` sample counts."""
    from plugtrain.core.runtime.folds import fold_split
    from plugtrain.core.runtime.loader import AugmentedDataset

    spec = built.spec
    old = built.train_data
    split = built.splits.train
    targets = getattr(split, "targets", None)
    if targets is None:
        raise PlugtrainError(f"[data] cross-validation needs the train split to list its targets (a `targets` "
                             f"attribute); dataset {spec.data.dataset.name!r} does not")
    targets = list(targets)
    base = list(old.indices) if old.indices is not None else None
    if base is not None:
        targets = [targets[i] for i in base]
    tr, va = fold_split(targets, fold, folds, spec.run.seed)
    if base is not None:
        tr, va = [base[p] for p in tr], [base[p] for p in va]
    to_tensor = spec.augmentations.normalize
    built.train_data = AugmentedDataset(split, built.train_transform, spec.run.seed, "train", spec.data.num_views, tr,
                                        old.label_map, to_tensor)
    built.val_data = AugmentedDataset(split, built.val_transform, spec.run.seed, "val", 1, va, old.label_map,
                                      to_tensor)
    if spec.data.sampler == "m_per_class":
        from plugtrain.core.runtime.build import split_targets
        from plugtrain.core.runtime.loader import m_per_class_order

        built.train_order = m_per_class_order(split_targets(split, tr, old.label_map), spec.data.m_per_class)
    return len(tr), len(va)


class _Capture:
    """The last callback of the run: what the run leaves, read from the trainer at its end."""

    def __init__(self, fold: tuple[int, int] | None, sizes: dict[str, int]) -> None:
        self.fold, self.sizes = fold, sizes
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
                        {"fold": self.fold[0], "folds": self.fold[1], "seed": trainer.spec.run.seed, **self.sizes,
                         "val": "fold of the train split (validation transforms)"})

    def on_train_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.history = [dict(h) for h in trainer.history]
        self.final = dict(metrics)
        self.epochs = int(trainer.epoch)
        self.stop_reason = trainer.stop_reason
        self.run_dir = trainer.run_dir


@contextlib.contextmanager
def _extended_build(callbacks: list[Any], fold: tuple[int, int] | None, sizes: dict[str, int]) -> Iterator[None]:
    """``build.build_run`` that appends ``callbacks`` and, for a training build, restricts it to ``fold``."""
    from plugtrain.core.runtime import build

    original = build.build_run

    def build_run(spec: Any, dist: Any, purpose: str = "train") -> Any:
        if fold is None or purpose != "train":
            built = original(spec, dist, purpose)
        else:
            built = original(spec, dist, "eval")
            n_train, n_val = apply_fold(built, *fold)
            sizes.update(train_samples=n_train, val_samples=n_val)
            build.build_training(built, dist)
        if purpose == "train":
            built.callbacks.extend(callbacks)
        return built

    with _LOCK:
        build.build_run = build_run
        try:
            yield
        finally:
            build.build_run = original


def train(path: str, overrides: list[str], *, resume: str | None = None, overwrite: bool = False,
          callbacks: list[Any] | tuple = (), fold: tuple[int, int] | None = None) -> RunResult:
    """Train the spec at ``path`` with ``overrides`` as ``plugtrain train`` does; raises what the train command would
    report (:class:`PlugtrainError`, ``TrainingFailed``, ``Interrupted``)."""
    import time

    from plugtrain.commands import train as train_cmd

    t0 = time.monotonic()
    sizes: dict[str, int] = {}
    capture = _Capture(fold, sizes)
    with _extended_build([*callbacks, capture], fold, sizes):
        train_cmd._train_one(path, list(overrides), resume, overwrite, False)
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
