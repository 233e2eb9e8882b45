"""``plugtrain submit``'s time budget (issue 26): a time limit whose starts cannot reach a step boundary and write
``last.pt`` before the warning is refused before anything is submitted, from the limit and the warning alone for a
new run and from the run's own records (its SLURM jobs' startups, metrics.csv's step time) for a continued one; the
script says which estimate was used. No SLURM is needed: the refusal comes before sbatch is looked for."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import tiny_spec

from plugtrain.core.runtime import session
from plugtrain.slurm import budget, worker


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A real one-epoch run trained as a SLURM task trains it (the worker's startup record among its callbacks)."""
    root = tmp_path_factory.mktemp("budget")
    spec = tiny_spec(root, "hist", epochs=1, steps=2)
    session.run(str(spec), callbacks=[worker.StartupRecord("7", 0)])
    return root / "runs" / "hist"


@pytest.fixture
def continued(trained, tmp_path, monkeypatch):
    """A copy of the trained run and its spec, to be continued with ``--resume auto``; no SLURM on the PATH."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    shutil.copytree(trained, tmp_path / "runs" / "hist")
    return tiny_spec(tmp_path, "hist", epochs=2, steps=2), tmp_path / "runs" / "hist"


def _set_startup(run_dir: Path, seconds: float) -> None:
    (run_dir / budget.STARTS_FILE).unlink()
    budget.record_start(run_dir, "8", 0, seconds)


def _set_step_time(run_dir: Path, seconds: float) -> None:
    path = run_dir / "metrics.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["train/step_time"] = str(seconds)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_the_worker_records_its_startup_and_the_trainer_its_step_time(trained):
    starts = json.loads((trained / budget.STARTS_FILE).read_text())["starts"]
    assert [(s["job"], s["restart"]) for s in starts] == [("7", 0)] and starts[0]["seconds"] > 0
    est = budget.measured(trained)
    assert est.startup == starts[0]["seconds"] and est.step is not None and est.step > 0
    assert "metrics.csv" in est.step_from and budget.STARTS_FILE in est.startup_from


@pytest.mark.parametrize(("startup", "step", "args", "expected"), [
    (40, None, ["--time", "00:01:00", "--signal", "USR1@30"],
     r"--time 00:01:00: each start of the job has 30 s before the warning \(60 s - 30 s of --signal USR1@30\), less "
     r"than it needs to reach its first step boundary and write last\.pt: startup 40 s \(the fastest of 1 start\(s\) "
     r"recorded in \S+/slurm-starts\.json\); one step [\d.e-]+ s \(the median of 1 epoch\(s\) of train/step_time in "
     r"\S+/metrics\.csv\); give a --time longer than 70 s"),
    (1, 50, ["--time", "1", "--signal", "USR1@20"],  # 1 minute (MM)
     r"--time 1: each start .* has 40 s before the warning .*startup 1 s .*one step 50 s .*longer than 71 s"),
    (1, 120, ["--time", "0-01", "--signal", "USR2@90"],  # one hour (D-HH): room enough, but not the warning
     r"--signal USR2@90: the warning comes 90 s before the time limit, but one step takes 120 s \(the median of 1 "
     r"epoch\(s\) of train/step_time in \S+metrics\.csv\): the step in flight could not end and write last\.pt in "
     r"time; give a warning longer than 120 s"),
])
def test_a_time_limit_the_run_cannot_use_is_refused_before_submission(continued, cli_run, startup, step, args,
                                                                      expected):
    spec, run_dir = continued
    _set_startup(run_dir, startup)
    if step is not None:
        _set_step_time(run_dir, step)
    before = _files(run_dir)
    r = cli_run("submit", spec, "--resume", "auto", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(expected, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert _files(run_dir) == before and not (run_dir.parent / "slurm-logs").exists()


def test_the_script_says_the_estimate_it_was_checked_against(continued, cli_run, tmp_path):
    spec, run_dir = continued
    _set_startup(run_dir, 40)
    r = cli_run("submit", spec, "--resume", "auto", "--time", "00:02:00", "--signal", "USR1@60", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "# Time budget: --time 00:02:00 = 120 s; the warning (USR1@60) leaves 60 s per start to reach a step " \
           "boundary." in lines, r.stdout
    assert any(re.fullmatch(r"# Measured: startup 40 s \(the fastest of 1 start\(s\) recorded in \S+\); one step "
                            r"[\d.e-]+ s \(the median .*metrics\.csv\)\.", line) for line in lines), r.stdout
    # a new run has no history: only the certain is refused, and the script says what was not known
    new = tiny_spec(tmp_path, "fresh")
    r = cli_run("submit", new, "--time", "00:00:30", "--signal", "USR1@10", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "# Not known before the first job of this run: startup and step time (assumed to fit; resubmissions " \
           "with --resume check them against this run's records)." in r.stdout.splitlines(), r.stdout
    r = cli_run("submit", new, "--time", "0:30", "--signal", "USR1@30")  # MM:SS: the warning at the start
    assert r.returncode == 2 and "comes before the job has trained at all (--time 0:30 is 30 s)" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "fresh").exists()
