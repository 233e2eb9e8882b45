"""``plugtrain sweep FILE --submit --array K`` (issue 26 item 3): K sweep workers as a SLURM array job on one study,
whose storage defaults to Optuna's journal file in the sweep directory (no database server), with heartbeats so that
a dead worker's trial is failed and retried as with a database; checked on the real one-node SLURM of
tests/helpers_slurm.py."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from helpers_slurm import slurm  # noqa: F401 - the session's cluster
from helpers_sweep import lr_sweep

from plugtrain.sweep import study


def test_dry_run_prints_an_array_script_of_sweep_workers_on_a_journal_file(cli_run, tmp_path, monkeypatch):
    sw = lr_sweep(tmp_path, "arr", epochs=1, steps=2, trials=4, sampler="random", pruner="none")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, sinfo or scontrol: printed, not checked
    r = cli_run("sweep", sw, "--submit", "--array", "3", "--time", "00:30:00", "--set", "run.epochs=1",
                "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for line in ("#!/bin/bash", "#SBATCH --array=0-2", "#SBATCH --time=00:30:00", "#SBATCH --signal=USR1@90",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue",
                 "export PLUGTRAIN_STOP_SIGNALS=USR1"):
        assert line in lines, (line, r.stdout)
    journal = study.journal_storage(tmp_path / "runs" / "arr")
    srun = next(line for line in lines if line.startswith("srun "))
    assert re.fullmatch(rf"srun \S+ -m plugtrain sweep {re.escape(str(sw.resolve()))} --trials 4 --storage "
                        rf"{re.escape(journal)} --set run.epochs=1 &", srun), srun
    assert any("%A_%a.out" in line for line in lines if line.startswith("#SBATCH --output="))
    assert "not checked against a cluster" in r.stderr
    assert "  scontrol requeue \"$SLURM_JOB_ID\" && exit 0" in lines  # a worker stopped by a signal comes back
    assert subprocess.run(["/bin/bash", "-n"], input=r.stdout, text=True).returncode == 0
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize(("args", "expected"), [
    (["--array", "2"], r"--array is an option of --submit"),
    (["--time", "10:00"], r"--time is an option of --submit"),
    (["--submit", "--time", "10:00"], r"how many workers\? give --array K"),
    (["--submit", "--array", "0", "--time", "10:00"], r"--array 0: give the number of sweep workers"),
    (["--submit", "--array", "2"], r"give the job's time limit"),
    (["--submit", "--array", "2", "--time", "10:00", "--nodes", "2"], r"each array task is one sweep worker"),
    (["--submit", "--array", "2", "--time", "10:00", "--storage", "journal:///"], r"journal:///ABSOLUTE/PATH"),
    (["--storage", "journal:///no/such/dir/s.journal"], r"cannot open the study journal /no/such/dir/s\.journal"),
])
def test_bad_submit_options_are_one_message(cli_run, tmp_path, monkeypatch, args, expected):
    sw = lr_sweep(tmp_path, "bad", epochs=1, steps=2, trials=2)
    monkeypatch.setenv("PATH", str(tmp_path))
    r = cli_run("sweep", sw, *args, *(["--dry-run"] if "--submit" in args else []))
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(expected, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_journal_storage_fails_a_silent_trial_and_queues_its_retry(tmp_path):
    """Optuna's journal storage has no heartbeats of its own: ours stamps each running trial, and a trial whose
    worker fell silent (killed, its node lost) is failed and its parameters queued again, as RDBStorage does."""
    import optuna

    url = study.journal_storage(tmp_path)
    study.check_storage_url(url)
    storage = study.make_storage(url, 1, 1, 2)
    st = optuna.create_study(study_name="s", storage=storage)
    trial = st.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(st)
    assert [t.state.name for t in st.get_trials()] == ["RUNNING"]  # fresh heartbeat: left alone
    time.sleep(1.2)
    optuna.storages.fail_stale_trials(st)  # the worker died: no heartbeat for longer than the grace period
    again = optuna.load_study(study_name="s", storage=study.make_storage(url, None, None, 0))
    states = [t.state.name for t in again.get_trials()]
    assert states == ["FAIL", "WAITING"], states
    assert again.get_trials()[1].params == {"x": trial.params["x"]}
    assert (tmp_path / "study.journal").is_file()


def _wait_array(cluster, job_id: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = cluster.run("squeue", "-h", "-r", "-j", job_id, "-o", "%i %T", check=False).stdout.strip()
        if not left:
            return
        time.sleep(0.5)
    raise AssertionError(f"array job {job_id} did not end in {timeout} s: {left}\n{cluster.logs()}")


@pytest.mark.slow
def test_an_array_of_two_workers_finishes_its_study(slurm, tmp_path, cli_run, monkeypatch):  # noqa: F811
    import optuna

    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.chdir(tmp_path)
    sw = lr_sweep(tmp_path, "onslurm", epochs=1, steps=2, trials=4, sampler="random", pruner="none", heartbeat=2)
    r = cli_run("sweep", sw, "--submit", "--array", "2", "--time", "00:10:00", "--cpus-per-task", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"submitted array job (\d+): 2 sweep worker", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    _wait_array(slurm, m.group(1))
    sweep_dir = tmp_path / "runs" / "onslurm"
    logs = sorted((tmp_path / "runs" / "slurm-logs").glob(f"sweep-onslurm-{m.group(1)}_*.out"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert len(logs) == 2, text
    st = optuna.load_study(study_name="onslurm", storage=study.make_storage(
        study.journal_storage(sweep_dir), None, None, 0))
    assert [t.state.name for t in st.get_trials()] == ["COMPLETE"] * 4, text
    assert all("sweep onslurm: " in p.read_text(errors="replace") for p in logs), text  # both workers ran
    assert not (sweep_dir / "study.db").exists()
    status = cli_run("sweep", "status", sweep_dir)  # finds the journal in the sweep directory by itself
    assert status.returncode == 0 and "4 of 4 trials done" in status.stdout, status.stdout + status.stderr
