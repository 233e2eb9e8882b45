"""The pruner stops a deliberately bad trial early (issue 16): the objective is reported to Optuna after every
epoch by a callback given to the trainer, the median pruner compares it with the earlier trials at the same epoch,
and the trainer is asked to stop; the trial is recorded as pruned and its run directory is kept and marked."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import cli, tiny_spec
from helpers_sweep import load_study, plain_table, write_sweep


@pytest.mark.slow
def test_the_median_pruner_stops_a_bad_trial_after_its_first_epoch(tmp_path, capsys, one_torch_thread):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs", epochs=3, steps=2)
    # two sane learning rates first, then one that blows the validation loss up (to ~1e15 after one epoch)
    sw = write_sweep(tmp_path / "prune.toml", spec, """\
[sweep]
trials = 3
objective = "val/loss"
sampler = "random"
pruner = { name = "median", startup_trials = 2 }

[params]
optimizer.lr = { choice = [2e-3, 3e-3, 5.0] }

[[enqueue]]
optimizer.lr = 2e-3

[[enqueue]]
optimizer.lr = 3e-3

[[enqueue]]
optimizer.lr = 5.0
""")
    assert cli("sweep", sw) == 0
    sweep_dir = tmp_path / "runs" / "prune"
    study = load_study(sweep_dir)
    assert study.direction.name == "MINIMIZE"  # val/loss: mode guessed as for run.primary_metric
    states = {t.params["optimizer.lr"]: t.state.name for t in study.trials}
    assert states == {2e-3: "COMPLETE", 3e-3: "COMPLETE", 5.0: "PRUNED"}
    bad = next(t for t in study.trials if t.params["optimizer.lr"] == 5.0)
    assert list(bad.intermediate_values) == [1]  # reported once, then stopped
    assert bad.intermediate_values[1] > 100 * max(t.value for t in study.trials if t.state.name == "COMPLETE")
    run_dir = sweep_dir / f"trial-{bad.number:04d}"
    with (run_dir / "metrics.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]  # the run stopped after epoch 1 of 3
    assert (run_dir / "checkpoints" / "last.pt").is_file()  # kept, like any stopped run
    assert "pruned by the median pruner after epoch 1" in (run_dir / "PRUNED").read_text()
    record = json.loads((run_dir / "trial.json").read_text())
    assert record["state"] == "PRUNED" and record["pruned_at_epoch"] == 1 and record["epochs"] == 1
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [1, 2, 3]
            assert not (sweep_dir / f"trial-{t.number:04d}" / "PRUNED").exists()
    capsys.readouterr()
    assert cli("sweep", "status", sweep_dir) == 0
    _, rows = plain_table(capsys.readouterr().out)
    assert [r[1] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"] and rows[-1][4] == "1"
    assert float(rows[0][3]) <= float(rows[1][3])  # val/loss: the lowest first
