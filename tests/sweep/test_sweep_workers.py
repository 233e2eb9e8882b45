"""Sweep workers as real processes on one SQLite study (issue 16): two workers take disjoint trials at the same time
and together complete the study's total; a worker killed with SIGKILL in the middle of a trial loses only that
trial, which the restarted worker finds failed (its heartbeat stopped) and runs again with the same parameters."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli, run_cli, subprocess_env
from helpers_sweep import load_study, lr_sweep


def _worker(sweep_file: Path, *args: str, log: Path) -> subprocess.Popen:
    env = subprocess_env(PYTHONPATH=str(REPO))
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "plugtrain", "sweep", str(sweep_file), *args], stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=sweep_file.parent)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(log.read_text()[-3000:]) from None


@pytest.mark.slow
def test_two_workers_take_disjoint_trials_at_the_same_time_and_complete_the_total(tmp_path, capsys):
    sw = lr_sweep(tmp_path, "pair", epochs=2, steps=12, sampler="random", pruner="none")
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    procs = [_worker(sw, "--trials", "4", log=log) for log in logs]
    codes = [_wait(p, log) for p, log in zip(procs, logs, strict=True)]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    sweep_dir = tmp_path / "runs" / "pair"
    study = load_study(sweep_dir)
    trials = study.trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
        record = json.loads((sweep_dir / f"trial-{t.number:04d}" / "trial.json").read_text())
        assert record["worker"] == t.user_attrs["worker"] and record["state"] == "COMPLETE"
    pids = {str(p.pid) for p in procs}
    assert {w.rsplit(":", 1)[1] for w in by_worker} == pids  # both workers ran trials, no one else did
    # the two workers' trials ran at the same time: some trial of one overlaps some trial of the other
    a, b = by_worker.values()
    assert any(x.datetime_start < y.datetime_complete and y.datetime_start < x.datetime_complete
               for x in a for y in b), [(t.number, t.user_attrs["worker"], t.datetime_start, t.datetime_complete)
                                        for t in trials]
    # the same command again: the study is done, nothing more runs
    capsys.readouterr()
    assert cli("sweep", sw, "--trials", "4") == 0
    assert "4 of 4 trials done" in capsys.readouterr().out and len(load_study(sweep_dir).trials) == 4


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_trial_which_is_failed_and_run_again(tmp_path, capsys):
    sw = lr_sweep(tmp_path, "kill", epochs=4, steps=8, trials=2, sampler="random", pruner="none", heartbeat=1)
    sweep_dir = tmp_path / "runs" / "kill"
    first = _worker(sw, log=tmp_path / "first.log")
    last = sweep_dir / "trial-0000" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not last.is_file():  # trial 0 has finished its first epoch of four: kill the worker in the middle
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    killed = load_study(sweep_dir).trials
    assert [t.state.name for t in killed] == ["RUNNING"]  # nobody told the study: only the heartbeat stopped
    assert json.loads((sweep_dir / "trial-0000" / "trial.json").read_text())["state"] == "RUNNING"

    second = run_cli("sweep", sw, cwd=tmp_path, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    trials = load_study(sweep_dir).trials
    states = {t.number: t.state.name for t in trials}
    assert states[0] == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == trials[0].params  # the same point, run again
    assert sum(1 for t in trials if t.state.name == "COMPLETE") == 2 and len(trials) == 3
    record = json.loads((sweep_dir / "trial-0000" / "trial.json").read_text())
    assert record["state"] == "FAIL" and record["retried_as"] == retry[0].number and "heartbeat" in record["error"]
    # the retry continued the killed attempt from its last.pt (written after an epoch) instead of starting over
    rdir = sweep_dir / f"trial-{retry[0].number:04d}"
    assert (rdir / "checkpoints" / "best.pt").is_file()
    assert json.loads((rdir / "env.json").read_text())["resumed_from"] == str(last)
    assert json.loads((rdir / "trial.json").read_text())["resumed_from"] == str(last)
    assert sorted(retry[0].intermediate_values) == [1, 2, 3, 4]
    with (rdir / "metrics.csv").open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]
    capsys.readouterr()
    assert cli("sweep", "status", sweep_dir) == 0
    out = capsys.readouterr().out
    assert f"FAIL (retried as {retry[0].number})" in out and "COMPLETE (retry of 0)" in out
    assert "2 of 2 trials done (2 complete, 0 pruned, 0 failed, 1 retried, 0 running)" in out
