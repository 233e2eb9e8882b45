"""``plugtrain train A B`` and ``plugtrain train A B --folds K`` run in one queue loop
(:func:`plugtrain.core.runtime.jobs.run_queue`), and the folds of a cross-validation are a list of jobs run by one
loop (:func:`~plugtrain.core.runtime.jobs.run_jobs`) that collects their RunResults (issue 22)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_spec

from plugtrain.core.errors import PlugtrainError, Stopped, TrainingFailed
from plugtrain.core.runtime import jobs


def test_the_queue_reports_each_failure_in_one_line_goes_on_and_stops_at_a_signal(capfd):
    ran: list[str] = []

    def ok(name: str, code: int = 0):
        return lambda: ran.append(name) or code

    def fails(exc: Exception):
        def run() -> int:
            raise exc
        return run

    code = jobs.run_queue([("a.toml", fails(PlugtrainError("bad spec"))), ("b.toml", ok("b")),
                           ("c.toml", fails(TrainingFailed("nan"))), ("d.toml", fails(KeyError("x")))],
                          interrupted=str)
    out = capfd.readouterr()
    assert code == 2 and ran == ["b"]
    assert "a.toml: bad spec" in out.err and "c.toml: nan" in out.err
    assert "d.toml: KeyError: 'x' (set PLUGTRAIN_DEBUG=1 for the traceback)" in out.err
    assert "3 of 4 specs failed" in out.out

    code = jobs.run_queue([("a.toml", fails(Stopped(15, None, 7))), ("b.toml", ok("late"))],
                          interrupted=lambda exc: f"stopped at {exc.step}")
    assert code == 143 and "late" not in ran and "stopped at 7" in capfd.readouterr().out


@pytest.mark.slow  # two folds of a tiny run, and a bad spec beside them
def test_folds_share_the_queue_of_train_and_run_as_jobs(tmp_path, cli_run):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nname = 1\n")
    good = tiny_spec(tmp_path, "cv", epochs=1, steps=1)
    proc = cli_run("train", bad, good, "--folds", "2")
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:" in proc.stderr and "1 of 2 specs failed" in proc.stdout  # as `train A B` says it
    assert "cv: fold 1 of 2" in proc.stdout and "cv: fold 2 of 2" in proc.stdout
    cv = json.loads((tmp_path / "runs" / "cv" / "cv.json").read_text())
    assert [r["fold"] for r in cv["runs"]] == [1, 2]
    for k in (1, 2):
        assert json.loads((tmp_path / "runs" / "cv" / f"fold-{k}" / "fold.json").read_text())["fold"] == k
