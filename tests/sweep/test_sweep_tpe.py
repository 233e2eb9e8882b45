"""A real 6-trial TPE sweep over the learning rate and the backbone (issue 16): every trial an ordinary run in
``trial-NNNN/``, the study in SQLite, ``sweep status`` best first, ``best.toml`` that trains as it is, Optuna's plots
as PNG files that open, and the objective per trial in TensorBoard."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import cli, tiny_spec
from helpers_sweep import load_study, plain_table, write_sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def swept(tmp_path_factory, one_torch_thread):
    """The sweep, run once for the tests of this module: ``(sweep_dir, stdout of the sweep)``."""
    tmp = tmp_path_factory.mktemp("tpe")
    spec = tiny_spec(tmp, "base", tmp / "runs", epochs=2, steps=2)
    sw = write_sweep(tmp / "tpe.toml", spec, """\
[sweep]
name = "tpe6"
trials = 6
sampler = { name = "tpe", startup_trials = 3 }
pruner = "none"
seed = 1

[params]
optimizer.lr = { log_uniform = [1e-3, 2e-2] }
"backbone.name" = { choice = ["test_efficientnet", "test_resnet"] }
""")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli("sweep", sw) == 0
    return tmp / "runs" / "tpe6", buf.getvalue()


@pytest.mark.slow
def test_six_trials_are_ordinary_runs_and_the_study_is_complete(swept):
    sweep_dir, out = swept
    study = load_study(sweep_dir)
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert {t.params["backbone.name"] for t in study.trials} <= {"test_efficientnet", "test_resnet"}
    assert all(1e-3 <= t.params["optimizer.lr"] <= 2e-2 for t in study.trials)
    for t in study.trials:
        run_dir = sweep_dir / f"trial-{t.number:04d}"
        for f in ("spec.toml", "env.json", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt"):
            assert (run_dir / f).exists(), (run_dir, f)
        resolved = tomllib.loads((run_dir / "spec.toml").read_text())
        assert resolved["optimizer"]["lr"] == t.params["optimizer.lr"]
        assert resolved["backbone"]["name"] == t.params["backbone.name"]
        record = json.loads((run_dir / "trial.json").read_text())
        assert record["state"] == "COMPLETE" and record["value"] == t.value and record["epochs"] == 2
        assert sorted(t.intermediate_values) == [1, 2]  # the objective reported after each epoch
        assert t.value == max(t.intermediate_values.values())  # the trial's value: its best epoch
    assert "sweep tpe6: trial 5 complete" in out


@pytest.mark.slow
def test_status_prints_the_trials_best_first(swept, capsys):
    sweep_dir, _ = swept
    assert cli("sweep", "status", sweep_dir) == 0
    out = capsys.readouterr().out
    header, rows = plain_table(out)
    assert header == ["trial", "state", "params", "val/accuracy", "epochs", "time"]
    assert len(rows) == 6 and all(r[1] == "COMPLETE" and r[4] == "2" for r in rows)
    values = [float(r[3]) for r in rows]
    assert values == sorted(values, reverse=True)
    study = load_study(sweep_dir)
    assert int(rows[0][0]) == study.best_trial.number
    assert "optimizer.lr=" in rows[0][2] and "backbone.name=" in rows[0][2]
    assert "6 of 6 trials done (6 complete" in out


@pytest.mark.slow
def test_plots_are_png_files_that_open(swept):
    from PIL import Image

    sweep_dir, _ = swept
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        path = sweep_dir / f"{name}.png"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
            im.load()
            assert sum(1 for c in im.convert("L").histogram() if c) > 10  # drawn, not blank


@pytest.mark.slow
def test_the_objective_of_each_trial_is_in_tensorboard(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep_dir, _ = swept
    acc = EventAccumulator(str(sweep_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {e.step: e.value for e in acc.Scalars("sweep/objective")}
    study = load_study(sweep_dir)
    assert got == pytest.approx({t.number: t.value for t in study.trials}, abs=1e-6)


@pytest.mark.slow
def test_best_toml_is_the_best_trial_and_trains_as_it_is(swept, tmp_path, one_torch_thread):
    sweep_dir, _ = swept
    study = load_study(sweep_dir)
    best = study.best_trial
    text = (sweep_dir / "best.toml").read_text()
    spec = tomllib.loads(text)
    assert spec["optimizer"]["lr"] == best.params["optimizer.lr"]
    assert spec["backbone"]["name"] == best.params["backbone.name"]
    assert spec["run"]["name"] == "tpe6-best"
    assert f"trial {best.number}" in text.splitlines()[0]
    out_dir = Path(spec["run"]["output_dir"])
    assert cli("check", sweep_dir / "best.toml") == 0
    assert cli("train", sweep_dir / "best.toml") == 0
    run_dir = out_dir / "tpe6-best"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    trained = tomllib.loads((run_dir / "spec.toml").read_text())
    assert trained["optimizer"]["lr"] == best.params["optimizer.lr"]
    # the same spec, the same seed, the same machine: the same value as the trial
    import csv

    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert max(float(r["val/accuracy"]) for r in rows) == pytest.approx(best.value, abs=1e-6)
