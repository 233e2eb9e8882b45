"""k-fold cross-validation: ``plugtrain train SPEC --folds K``, and a sweep trial's objective (``[sweep] folds``).

The K runs are ordinary runs in ``<output_dir>/<run.name>/fold-<k>/`` (k = 1..K), each trained on the other folds of
the train split and validated on fold k (stratified, seeded by ``run.seed``: :mod:`plugtrain.core.runtime.folds`),
each with a ``fold.json``. Each fold is summarised by the metrics of its best epoch (by ``run.primary_metric`` and
``run.mode``: the epoch ``best.pt`` holds); the mean and the sample standard deviation (ddof = 1) over the folds of
every validation metric are printed as a table and written to ``<output_dir>/<run.name>/cv.json``.
"""

from __future__ import annotations

import datetime
import functools
import math
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, Stopped
from plugtrain.core.runtime.jobs import write_json as _write_json
from plugtrain.core.runtime.session import RunResult


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, folds: int, resume: str | None = None,
        overwrite: bool = False, dry_run: bool = False) -> int:
    """``plugtrain train SPEC... --folds K``: cross-validate each spec, in the queue ``plugtrain train`` runs
    (:func:`~plugtrain.core.runtime.jobs.run_queue`); the highest exit code wins."""
    from plugtrain.core.runtime import jobs

    if folds < 2:
        raise PlugtrainError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if dry_run:
        raise PlugtrainError("--folds and --dry-run exclude each other: dry-run the spec without --folds")
    if resume not in (None, "auto"):
        raise PlugtrainError("--folds takes --resume auto only (each fold continues from its own last.pt)")

    def one(path: str) -> int:
        print_table(cross_validate(path, list(overrides), folds, resume=resume, overwrite=overwrite))
        return 0

    def interrupted(exc: Stopped) -> str:
        name = signal.Signals(exc.signum).name
        return f"interrupted by {name} at step {exc.step}; continue with --folds {folds} --resume auto"

    return jobs.run_queue([(path, functools.partial(one, path)) for path in specs], interrupted)


@attrs.define
class CVResult:
    cv_dir: Path
    folds: int
    seed: int
    metric: str
    mode: str
    runs: list[RunResult]
    best_rows: list[tuple[int, dict[str, float]]]
    metrics: dict[str, dict[str, Any]]  # name -> {mean, std, values}

    @property
    def objective(self) -> float:
        return float(self.metrics[self.metric]["mean"])


def fold_name(name: str, k: int) -> str:
    return f"{name}/fold-{k}"


def cross_validate(path: str, overrides: list[str], folds: int, *, resume: str | None = None,
                   overwrite: bool = False, callbacks_for: Callable[[int], list[Any]] | None = None,
                   after_fold: Callable[[int, RunResult], None] | None = None) -> CVResult:
    """Train the K folds of the spec at ``path`` (with ``overrides``) one after another and aggregate them
    (``cv.json`` in ``<output_dir>/<run.name>/``).

    ``callbacks_for(k)`` gives fold k's extra callbacks; ``after_fold(k, result)`` runs after each fold (a sweep
    stops a pruned trial there by raising)."""
    from plugtrain.core.runtime import jobs, rundir
    from plugtrain.core.spec import load_spec
    from plugtrain.sweep.space import toml_value

    spec = load_spec(path, overrides)
    cv_dir = rundir.run_dir_for(spec.run.output_dir, spec.run.name)
    if rundir.is_run_dir(cv_dir):
        raise PlugtrainError(f"{cv_dir} is the run directory of a run without folds; cross-validation writes "
                             f"{cv_dir}/fold-<k>/ and cv.json: choose another run.name, or remove it")
    metric, mode = spec.primary_metric, spec.mode
    fold_jobs = [jobs.Job(path, [*overrides, f"run.name={toml_value(fold_name(spec.run.name, k))}"], fold=(k, folds))
            for k in range(1, folds + 1)]
    results = jobs.run_jobs(
        fold_jobs, resume=resume, overwrite=overwrite,
        before=lambda job: console.echo(f"{spec.run.name}: fold {job.fold[0]} of {folds}"),
        callbacks_for=(lambda job: callbacks_for(job.fold[0])) if callbacks_for else None,
        after=(lambda job, res: after_fold(job.fold[0], res)) if after_fold else None)
    result = aggregate(cv_dir, results, folds, spec.run.seed, metric, mode)
    write_json(result)
    return result


def check_folds(path: str, overrides: list[str], folds: int) -> None:
    """Refuse ``folds`` that the train split cannot give (a class with fewer than K samples) before a sweep's first
    trial, rather than in every trial: reads the dataset once. Other problems of the data are left to the trials."""
    from plugtrain.core.runtime import build
    from plugtrain.core.spec import load_spec

    spec = load_spec(path, [*overrides, f"data.fold=[1, {folds}]"])
    try:
        splits = build.build_dataset(spec)
        subsets, _, _ = build.class_subset(spec, splits)
    except Exception:  # noqa: BLE001 - a trial reports it, with its own sampled values
        return
    build.fold_subsets(spec, splits, subsets)


def aggregate(cv_dir: Path, results: list[RunResult], folds: int, seed: int, metric: str, mode: str) -> CVResult:
    """Mean and sample std over the folds of every ``val*`` metric at each fold's best epoch."""
    best_rows: list[tuple[int, dict[str, float]]] = []
    for r in results:
        b = r.best_row(metric, mode)
        if b is None:
            raise PlugtrainError(f"{r.run_dir}: no epoch reported a finite {metric}; cannot aggregate the folds")
        best_rows.append(b)
    names: list[str] = []
    for _, row in best_rows:
        names += [k for k in row if k.startswith("val") and k not in names]
    metrics: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [float(row[name]) for _, row in best_rows if isinstance(row.get(name), (int, float))]
        if len(values) != len(best_rows):
            continue
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        metrics[name] = {"mean": mean, "std": std, "values": values}
    if metric not in metrics:
        raise PlugtrainError(f"{cv_dir}: {metric} is missing from some fold; cannot aggregate the folds")
    return CVResult(cv_dir=cv_dir, folds=folds, seed=seed, metric=metric, mode=mode, runs=results,
                    best_rows=best_rows, metrics=metrics)


def write_json(result: CVResult) -> Path:
    path = result.cv_dir / "cv.json"
    data = {
        "folds": result.folds,
        "seed": result.seed,
        "primary_metric": result.metric,
        "mode": result.mode,
        "epoch": "best (by primary_metric and mode, per fold)",
        "std": "sample standard deviation (ddof = 1) over the folds",
        "metrics": result.metrics,
        "runs": [{"fold": k, "run_dir": str(r.run_dir), "best_epoch": e, "epochs": r.epochs,
                  "seconds": round(r.seconds, 2)}
                 for k, (r, (e, _)) in enumerate(zip(result.runs, result.best_rows, strict=True), start=1)],
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(path, data)
    return path


def print_table(result: CVResult) -> None:
    rows = []
    for name, m in result.metrics.items():
        rows.append((name, f"{m['mean']:.4f} ± {m['std']:.4f}", *(f"{v:.4f}" for v in m["values"])))
    columns = ["metric", "mean ± std", *(f"fold {k}" for k in range(1, result.folds + 1))]
    console.table(f"{result.folds}-fold cross-validation of {result.cv_dir} (each fold at its best epoch by "
                  f"{result.metric})", columns, rows)
    console.echo(f"{result.metric} = {result.metrics[result.metric]['mean']:.4f} ± "
                 f"{result.metrics[result.metric]['std']:.4f} over {result.folds} folds; {result.cv_dir / 'cv.json'}")
