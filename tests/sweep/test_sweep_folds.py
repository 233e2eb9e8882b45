"""k-fold cross-validation (issue 16): the folds themselves (stratified, seeded, disjoint, covering), then real
``plugtrain train SPEC --folds 3`` runs whose reported mean ± std are those of the folds' own metrics.csv, and a sweep
whose objective is the cross-validation mean."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli, tiny_spec
from helpers_sweep import lr_sweep

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime.folds import fold_split


def test_folds_are_disjoint_covering_stratified_and_seeded():
    targets = [i % 3 for i in range(50)] + [3] * 7  # four classes, one small
    folds = 5
    vals = [fold_split(targets, k, folds, seed=7)[1] for k in range(1, folds + 1)]
    flat = [i for v in vals for i in v]
    assert sorted(flat) == list(range(len(targets)))  # every sample validated exactly once
    for k in range(1, folds + 1):
        train, val = fold_split(targets, k, folds, seed=7)
        assert not set(train) & set(val) and len(train) + len(val) == len(targets)
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for cls in range(4):
        per_fold = [Counter(targets[i] for i in v)[cls] for v in vals]
        assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)
    assert vals == [fold_split(targets, k, folds, seed=7)[1] for k in range(1, folds + 1)]  # a function of the seed
    assert vals != [fold_split(targets, k, folds, seed=8)[1] for k in range(1, folds + 1)]


def test_float_targets_are_stratified_by_value_and_bad_folds_are_errors():
    values = [float(x) for x in range(40)]
    vals = [fold_split(values, k, 4, seed=0)[1] for k in range(1, 5)]
    assert sorted(i for v in vals for i in v) == list(range(40))
    for v in vals:  # one of each block of 4 neighbouring values: every fold spans the whole range
        assert sorted(int(values[i]) // 4 for i in v) == list(range(10))
    with pytest.raises(PlugtrainError, match="folds >= 2"):
        fold_split(values, 1, 1, seed=0)
    with pytest.raises(PlugtrainError, match="fold must be in 1..4"):
        fold_split(values, 5, 4, seed=0)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_three_fold_cross_validation_reports_the_mean_and_std_of_its_folds(tmp_path, capsys, one_torch_thread):
    spec = tiny_spec(tmp_path, "cv", tmp_path / "runs", epochs=2, steps=2)
    assert cli("train", spec, "--folds", "3") == 0
    out = capsys.readouterr().out
    cv_dir = tmp_path / "runs" / "cv"
    report = json.loads((cv_dir / "cv.json").read_text())
    assert report["folds"] == 3 and report["primary_metric"] == "val/accuracy"
    best_rows = []
    val_sizes = []
    for k in (1, 2, 3):
        run_dir = cv_dir / f"fold-{k}"
        assert (run_dir / "spec.toml").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
        fold = json.loads((run_dir / "fold.json").read_text())
        assert (fold["fold"], fold["folds"]) == (k, 3)
        val_sizes.append(fold["val_samples"])
        assert fold["train_samples"] + fold["val_samples"] == 1438  # the digits' train split, split into folds
        rows = _rows(run_dir)
        assert len(rows) == 2
        best = max(rows, key=lambda r: float(r["val/accuracy"]))  # the first of equals, as the runtime picks
        best_rows.append(best)
    assert abs(sum(val_sizes) - 1438) == 0 and max(val_sizes) - min(val_sizes) <= 1
    for metric in ("val/accuracy", "val/loss", "val/top5"):
        values = [float(r[metric]) for r in best_rows]
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        got = report["metrics"][metric]
        assert got["values"] == values
        assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["std"] == pytest.approx(std, abs=1e-12)
        assert f"{metric}\t{mean:.4f} ± {std:.4f}\t" in out, out
    # a second run with --resume auto continues each finished fold (nothing to train) and reports the same
    assert cli("train", spec, "--folds", "3", "--resume", "auto") == 0
    again = json.loads((cv_dir / "cv.json").read_text())
    assert again["metrics"] == report["metrics"]


@pytest.mark.slow
def test_a_sweep_can_optimise_the_cross_validation_mean(tmp_path, one_torch_thread):
    sw = lr_sweep(tmp_path, "cvsweep", epochs=1, steps=2, trials=2, folds=2, sampler="random", seed=3)
    db = tmp_path / "elsewhere" / "studies.db"  # any database URL: here another SQLite file, as for a shared server
    db.parent.mkdir()
    assert cli("sweep", sw, "--storage", f"sqlite:///{db}") == 0
    sweep_dir = tmp_path / "runs" / "cvsweep"
    assert db.is_file() and not (sweep_dir / "study.db").exists()
    import optuna

    study = optuna.load_study(study_name="cvsweep", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:
        tdir = sweep_dir / f"trial-{t.number:04d}"
        assert (tdir / "fold-1" / "metrics.csv").is_file() and (tdir / "fold-2" / "metrics.csv").is_file()
        report = json.loads((tdir / "cv.json").read_text())
        assert t.value == pytest.approx(report["metrics"]["val/accuracy"]["mean"], abs=1e-12)
        assert sorted(t.intermediate_values) == [1, 2]  # fold k's epoch e is reported at step (k - 1) * epochs + e
        assert json.loads((tdir / "trial.json").read_text())["state"] == "COMPLETE"
    assert (sweep_dir / "best.toml").is_file()
    (sweep_dir / "best.toml").unlink()
    assert cli("sweep", "status", sweep_dir) == 0  # the study's URL comes from sweep.json
    assert (sweep_dir / "best.toml").is_file()
