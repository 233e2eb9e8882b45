"""Bad input to sweeps and cross-validation (issue 21), each class refused with one message, exit code 2, before
anything is written: a rerun whose search space, objective or run spec changed (it would add trials to the old study),
more folds than the smallest class has samples, a storage URL that cannot name a database, and a sweep file whose
``spec =`` names itself, another sweep file or a TOML file that is not a run spec. Real Optuna on SQLite, real data."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import tiny_spec
from helpers_data import folder_spec, write_folder
from helpers_sweep import load_study, write_sweep

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime.folds import fold_split

SPACE = """\
[sweep]
name = "s"
trials = 1
pruner = "none"

[params]
optimizer.lr = { log_uniform = [1e-4, 1e-2] }
"""


def _line_col(path: Path, needle: str) -> str:
    """``line:col`` of the first value after ``needle`` on its line (what the sweep reader reports)."""
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return f"{i}:{line.index('=', line.index(needle)) + 3}"
    raise AssertionError(needle)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- a rerun with a changed search space, objective or spec ------------------------------------------------------------
@pytest.fixture
def one_trial(tmp_path, cli_run, one_torch_thread):
    """A real one-trial sweep in ``tmp/runs/s``: ``(sweep file, spec, sweep dir)``."""
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs", epochs=1, steps=2)
    sw = write_sweep(tmp_path / "sw.toml", spec, SPACE)
    done = cli_run("sweep", sw)
    assert done.returncode == 0, done.stderr
    return sw, spec, tmp_path / "runs" / "s"


@pytest.mark.slow
def test_a_rerun_with_a_changed_space_is_refused_and_an_unchanged_one_continues(one_trial, cli_run):
    sw, spec, sweep_dir = one_trial
    before = _snapshot(sweep_dir)
    write_sweep(sw, spec, SPACE.replace("1e-2]", "1e-1]").replace('pruner = "none"', 'pruner = "none"\nobjective = '
                                                                  '"val/loss"')
                + '"data.batch_size" = { int = [8, 16], step = 8 }\n')
    got = cli_run("sweep", sw, "--trials", "2", "--set", "run.epochs=2")
    assert got.returncode == 2, got.stdout + got.stderr
    err = got.stderr
    assert "Traceback" not in err and "this sweep differs from the study it would continue" in err, err
    assert f"sw.toml:{_line_col(sw, 'optimizer.lr')}: [params] optimizer.lr is log_uniform [0.0001, 0.1]; in the " \
           "study it is log_uniform [0.0001, 0.01]" in err, err
    assert f"sw.toml:{_line_col(sw, 'data.batch_size')}: [params] data.batch_size (int [8, 16], step 8) is new" in err
    assert f"sw.toml:{_line_col(sw, 'objective')}: the objective is val/loss (min); the study's is val/accuracy " \
           "(max)" in err, err
    assert "run.epochs: 2 (was 1)" in err, err
    assert "[sweep] name" in err  # how to proceed: a new study
    assert _snapshot(sweep_dir) == before  # no trial, no rewritten sweep.json
    assert len(load_study(sweep_dir).trials) == 1

    write_sweep(sw, spec, SPACE)  # as it was: the study goes on
    again = cli_run("sweep", sw, "--trials", "2")
    assert again.returncode == 0, again.stderr
    assert len(load_study(sweep_dir).trials) == 2


@pytest.mark.slow
def test_the_study_itself_refuses_a_changed_space_from_another_sweep_directory(tmp_path, cli_run, one_torch_thread):
    """Workers on other machines share the study, not the sweep directory: the study keeps what a rerun must keep."""
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs", epochs=1, steps=2)
    sw = write_sweep(tmp_path / "sw.toml", spec, SPACE)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert cli_run("sweep", sw, "--storage", url).returncode == 0
    write_sweep(sw, spec, SPACE.replace("log_uniform = [1e-4, 1e-2]", "choice = [0.001, 0.01]"))
    got = cli_run("sweep", sw, "--storage", url, "--trials", "2", "--set", f"run.output_dir='{tmp_path / 'other'}'")
    assert got.returncode == 2, got.stderr
    assert f"'s' in {url}, 1 trial" in got.stderr, got.stderr
    assert "[params] optimizer.lr is choice of 0.001, 0.01; in the study it is log_uniform [0.0001, 0.01]" in got.stderr
    assert not (tmp_path / "other").exists()


def test_a_study_without_a_record_is_compared_by_its_trials_distributions(tmp_path, cli_run):
    """A study an earlier plugtrain made (no record in it, no sweep.json): its trials say what its space is."""
    import optuna

    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "sw.toml", spec, SPACE)
    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{sweep_dir / 'study.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"optimizer.lr": 1e-3, "data.batch_size": 16}, value=0.5,
        distributions={"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                       "data.batch_size": optuna.distributions.IntDistribution(8, 32, step=8)}))
    got = cli_run("sweep", sw, "--trials", "2")
    assert got.returncode == 2, got.stdout + got.stderr
    assert "[params] optimizer.lr is log_uniform [0.0001, 0.01]; in the study it is log_uniform [1e-05, 0.01]" \
        in got.stderr, got.stderr
    assert "[params] data.batch_size (int [8, 32], step 8) is gone: the study samples it" in got.stderr
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["study.db"]  # no sweep.json, no trial
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{sweep_dir / 'study.db'}").trials) == 1
    # the same space, and a different direction of the objective
    write_sweep(sw, spec, SPACE.replace("1e-4", "1e-5").replace('pruner = "none"', 'pruner = "none"\nmode = "min"')
                + '"data.batch_size" = { int = [8, 32], step = 8 }\n')
    got = cli_run("sweep", sw, "--trials", "2")
    assert got.returncode == 2 and "is to minimize; the study's is to maximize" in got.stderr, got.stderr


# -- folds above the smallest class -----------------------------------------------------------------------------------
def test_more_folds_than_the_smallest_class_is_an_error_naming_the_class():
    targets = [0] * 10 + [1] * 3 + [2] * 10
    with pytest.raises(PlugtrainError) as exc:
        fold_split(targets, 1, 4, seed=0, class_names=["ant", "bee", "cat"])
    msg = str(exc.value)
    assert "class 'bee' (label 1), has 3 samples" in msg and "use at most 3 folds" in msg, msg
    with pytest.raises(PlugtrainError, match=r"class 1, has 1 sample, .*at least 2 samples of every class"):
        fold_split([0, 0, 0, 1, 0], 1, 2, seed=0)
    assert len(fold_split(targets, 1, 3, seed=0)[1]) >= 3  # K = the smallest class works
    assert fold_split([0.1, 0.2, 0.3, 0.4], 1, 4, seed=0)[1]  # regression targets have no classes


@pytest.fixture
def small_class(tmp_path):
    """A real image folder whose class 'cat' has 3 images (ant and bee 10): a spec over it."""
    root = write_folder(tmp_path / "img", per_class=10)
    for p in sorted((root / "cat").iterdir())[3:]:
        p.unlink()
    return folder_spec(tmp_path / "spec.toml", tmp_path / "runs",
                       {"dataset": "imagefolder", "root": str(root), "num_workers": 0},
                       run={"epochs": 1}, trainer={"max_steps_per_epoch": 1})


def test_train_folds_above_the_smallest_class_is_refused_before_anything_is_written(small_class, cli_run, tmp_path):
    got = cli_run("train", small_class, "--folds", "5")
    assert got.returncode == 2, got.stdout + got.stderr
    m = re.search(r"the smallest class of the train split, class 'cat' \(label 2\), has (\d) samples, .*use at most "
                  r"(\d) folds", got.stderr)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) < 5, got.stderr
    assert "Traceback" not in got.stderr and not (tmp_path / "runs").exists()


def test_a_sweep_with_folds_above_the_smallest_class_is_refused_before_its_study(small_class, cli_run, tmp_path):
    sw = write_sweep(tmp_path / "cv.toml", small_class, SPACE.replace('pruner = "none"', 'pruner = "none"\nfolds = 5'))
    got = cli_run("sweep", sw)
    assert got.returncode == 2, got.stdout + got.stderr
    assert "class 'cat' (label 2)" in got.stderr and "use at most" in got.stderr, got.stderr
    assert not (tmp_path / "runs").exists()


# -- the storage URL ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "says"), [
    ("postgres//dbhost/sweeps", "not a database URL"),
    ("postgres://user:s3cret@dbhost/sweeps", "unknown kind of database 'postgres'. Did you mean 'postgresql'?"),
    ("postgresql://user:s3cret@dbhost:port/sweeps", "not a database URL"),
    ("sqlite:///no/such/folder/study.db", "the SQLite file's folder 'no/such/folder' does not exist"),
    ("sqlite://", "an in-memory SQLite study ends with its worker"),
])
def test_a_malformed_storage_url_fails_fast_and_writes_nothing(url, says, tmp_path, cli_run):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "sw.toml", spec, SPACE)
    t0 = time.monotonic()
    got = cli_run("sweep", sw, "--storage", url, cwd=tmp_path)
    assert got.returncode == 2, got.stdout + got.stderr
    assert time.monotonic() - t0 < 10  # no connection retries
    assert f"--storage {url.replace('s3cret', '***')}: {says}" in got.stderr, got.stderr
    assert "s3cret" not in got.stderr and "Traceback" not in got.stderr
    assert not (tmp_path / "runs").exists()  # no sweep.json, no sweep directory


def test_the_storage_url_from_the_environment_is_named_as_such(tmp_path, cli_run, monkeypatch):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "sw.toml", spec, SPACE)
    monkeypatch.setenv("PLUGTRAIN_SWEEP_STORAGE", "mysq://u@h/db")
    got = cli_run("sweep", sw)
    assert got.returncode == 2 and "PLUGTRAIN_SWEEP_STORAGE mysq://u@h/db: unknown kind of database 'mysq'" \
        in got.stderr, got.stderr
    assert not (tmp_path / "runs").exists()


# -- spec = what is not a run spec -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "says"), [
    ("sw.toml", "names this sweep file itself"),
    ("other.toml", "names another sweep file"),
    ("pyproject.toml", "names a TOML file that is not a run spec (it has [project], none of a run spec's sections)"),
    ("notes.txt", "names a file that is not TOML"),
])
def test_spec_naming_a_sweep_or_a_non_run_spec_is_one_problem_at_the_spec_value(target, says, tmp_path, cli_run):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    write_sweep(tmp_path / "other.toml", spec, SPACE)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    (tmp_path / "notes.txt").write_text("lr: 0.1 = good\n[", encoding="utf-8")
    sw = tmp_path / "sw.toml"
    sw.write_text(f'# a sweep\nspec = "{target}"\n\n{SPACE}', encoding="utf-8")
    for args in (("--check",), ()):
        got = cli_run("sweep", sw, *args, cwd=tmp_path)
        assert got.returncode == 2, got.stdout + got.stderr
        assert "1 problem in the sweep:" in got.stderr, got.stderr
        assert f"sw.toml:2:8: spec = '{target}' {says}" in got.stderr, got.stderr
    assert not (tmp_path / "runs").exists()
