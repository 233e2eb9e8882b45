"""``plugtrain submit`` against a real one-node SLURM (tests/helpers_slurm.py): the options refused before
submission, the script, and a 2-task job that is cut off by its time limit and then preempted (SIGTERM), requeues
itself each time and ends bitwise equal to an uninterrupted torchrun run of the same spec."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import model_state, run_cli, run_torchrun, subprocess_env, tiny_spec
from helpers_slurm import slurm  # noqa: F401 - the session's cluster

from plugtrain.core.runtime import session
from plugtrain.slurm import job, worker


@pytest.fixture
def on_cluster(slurm, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    return slurm


def submit(cli_run, spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_run("submit", spec, *args)


# -- refused before submission (one message, exit 2, nothing submitted or written) ------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    (["--time", "10:00", "--partition", "debgu"], r"--partition debgu: no such partition.*Did you mean 'debug'"),
    (["--time", "10:00", "--gpus-per-node", "1"], r"--gpus-per-node 1: partition debug has no GPUs"),
    (["--time", "03:00:00"], r"--time 03:00:00: longer than partition debug's limit MaxTime=02:00:00"),
    (["--time", "00:01:00", "--signal", "USR1@90"], r"--signal USR1@90: the warning 90 s before the time limit "
                                                    r"comes before the job has trained at all"),
    (["--time", "1:0:0:0"], r"--time '1:0:0:0': expected a SLURM time limit"),
    (["--time", "10:00", "--signal", "USR3@60"], r"--signal 'USR3@60'.*Did you mean .*'USR1'"),
    (["--time", "10:00", "--nodes", "2"], r"--nodes 2: partition debug has 1 node"),
])
def test_bad_options_are_refused_before_submission(on_cluster, cli_run, tmp_path, args, expected):
    spec = tiny_spec(tmp_path, "bad")
    before = on_cluster.run("squeue", "-h", "-o", "%i").stdout
    r = submit(cli_run, spec, *args)
    assert r.returncode == 2, r.stderr
    assert re.search(expected, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()
    assert on_cluster.run("squeue", "-h", "-o", "%i").stdout == before


def test_an_existing_run_is_refused_without_resume(on_cluster, cli_run, tmp_path):
    spec = tiny_spec(tmp_path, "exists")
    (tmp_path / "runs" / "exists" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "exists" / "checkpoints" / "last.pt").write_bytes(b"x")
    r = submit(cli_run, spec, "--time", "10:00")
    assert r.returncode == 2 and "pass --resume auto to continue it" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "slurm-logs").exists()


def test_launch_file_errors_say_where(on_cluster, cli_run, tmp_path):
    spec = tiny_spec(tmp_path, "launch")
    launch = tmp_path / "launch.toml"
    launch.write_text('[slurm]\ntime = "10:00"\npartiton = "debug"\n', encoding="utf-8")
    r = submit(cli_run, spec, "--launch", launch)
    assert r.returncode == 2
    assert f"{launch}:3:1: unknown key 'partiton' in [slurm]. Did you mean 'partition'?" in r.stderr, r.stderr


def test_dry_run_prints_the_script_and_submits_nothing(on_cluster, cli_run, tmp_path):
    spec = tiny_spec(tmp_path, "dry")
    launch = tmp_path / "launch.toml"
    launch.write_text('[slurm]\ntime = "00:30:00"\nsignal = "USR2@120"\nsetup = ["echo ready"]\n'
                      'sbatch = ["--mail-type=END"]\n', encoding="utf-8")
    r = submit(cli_run, spec, "--launch", launch, "--time", "00:20:00", "--set", "run.epochs=1", "--dry-run")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for line in ("#!/bin/bash", "#SBATCH --time=00:20:00", "#SBATCH --signal=USR2@120", "#SBATCH --requeue",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --mail-type=END", "echo ready",
                 "export PLUGTRAIN_STOP_SIGNALS=USR2"):
        assert line in text.splitlines(), (line, text)
    assert re.search(r"^srun .* -m plugtrain\.slurm\.worker --max-requeues 20 -- \S*dry\.toml --set run\.epochs=1 &$",
                     text, re.MULTILINE), text
    assert not (tmp_path / "runs").exists()
    assert on_cluster.run("squeue", "-h").stdout.strip() == ""


def test_slurm_task_variables_become_torch_distributed_ones():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_ID": "12345", "MASTER_ADDR": "node7"}
    assert worker.distributed_env(env) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                           "MASTER_ADDR": "node7", "MASTER_PORT": str(20000 + 12345 % 20000)}
    assert worker.distributed_env({**env, "RANK": "0"}) == {}  # torchrun per node set it already


@pytest.mark.parametrize(("text", "seconds"), [("90", 5400), ("10:30", 630), ("04:00:00", 14400), ("1-12", 129600),
                                               ("2-00:30", 174600), ("1-00:00:05", 86405)])
def test_slurm_time_formats(text, seconds):
    assert job.parse_time(text) == seconds


def test_usr1_and_named_signals_stop_a_run(monkeypatch):
    assert signal.SIGUSR1 in session.stop_signals()
    monkeypatch.setenv("PLUGTRAIN_STOP_SIGNALS", "usr2, SIGHUP")
    assert {signal.SIGUSR2, signal.SIGHUP} <= set(session.stop_signals())
    monkeypatch.setenv("PLUGTRAIN_STOP_SIGNALS", "KILL")
    with pytest.raises(Exception, match="PLUGTRAIN_STOP_SIGNALS='KILL'"):
        session.stop_signals()


# -- real jobs ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job's spec (3 epochs of 12 steps, the ranks agree on signals at every step) and its uninterrupted
    2-process torchrun run."""
    root = tmp_path_factory.mktemp("slurm-jobs")
    spec = tiny_spec(root, "job", root / "runs", epochs=3, steps=12, log_every=1)
    r = run_torchrun(2, "train", spec, "--set", 'run.name="reference"')
    assert r.returncode == 0, r.stderr[-3000:]
    return spec, model_state(root / "runs" / "reference" / "checkpoints" / "last.pt")


def _submit_job(cluster, spec: Path, name: str, *args: str) -> tuple[str, Path]:
    r = run_cli("submit", spec, "--set", f'run.name="{name}"', "--tasks-per-node", "2", "--cpus-per-task", "1", *args,
                env=subprocess_env(SLURM_CONF=str(cluster.conf)))
    assert r.returncode == 0, r.stderr
    m = re.search(r"submitted job (\d+): run dir (\S+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return m.group(1), Path(m.group(2))


def _log(run_dir: Path, job_id: str) -> str:
    path = run_dir.parent / "slurm-logs" / f"{run_dir.name}-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def _assert_equal(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for k in state:
        assert torch.equal(state[k], reference[k]), k


@pytest.mark.slow
def test_a_job_cut_off_by_its_time_limit_and_preempted_ends_equal_to_torchrun(slurm, reference):  # noqa: F811
    """One 2-task job (gloo, one CPU each) lives through both ways a job is cut off, and still ends bitwise equal
    to the uninterrupted 2-process torchrun run (same processes, same gloo reductions, one thread each):

    1. its time limit: two minutes (SLURM counts whole minutes) with the warning 100 s before; SIGUSR1 comes while
       the tasks start (held until the first step boundary) or train; every rank stops, rank 0 writes last.pt and
       requeues the job;
    2. preemption: the requeued job (given a longer limit here) continues from last.pt by itself, and
       ``scancel --signal=TERM`` while it trains stops and requeues it again;
    3. the second restart runs to the end; the finished run is not requeued.

    (One job for both, as each start of two interpreters with torch costs several seconds on the CI's two cores.)"""
    spec, ref = reference
    job_id, run_dir = _submit_job(slurm, spec, "cutoff", "--time", "00:02:00", "--signal", "USR1@100",
                                  "--max-requeues", "3")
    acted: list[str] = []

    def act(state: dict) -> None:
        restarts = state.get("Restarts", "0")
        if restarts == "1" and "extended" not in acted:
            slurm.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=00:10:00")
            acted.append("extended")
        log = _log(run_dir, job_id)
        second = log.partition("(restart 1) on")[2]
        if restarts == "1" and "term" not in acted and re.search(r"global_step \d+ ", second):
            first = int(re.search(r"stopped by \w+ at step (\d+)", log).group(1))
            steps = [int(n) for n in re.findall(r"global_step (\d+) ", second)]
            if steps and max(steps) >= first + 2:
                slurm.run("scancel", "--signal=TERM", job_id)
                acted.append("term")

    done = slurm.wait(job_id, timeout=600, on_running=act)
    log = _log(run_dir, job_id)
    assert done["JobState"] == "COMPLETED" and done["Restarts"] == "2", (done, log)
    assert re.search(r"slurm: stopped by SIGUSR1 at step \d+; last\.pt written; requeued job \d+ \(requeue 1 of at "
                     r"most 3\)", log), log
    assert re.search(r"slurm: stopped by SIGTERM at step \d+; last\.pt written; requeued job \d+ \(requeue 2 of at "
                     r"most 3\)", log), log
    for k in (1, 2):
        assert f"slurm: job {job_id} restart {k}: continuing from {run_dir}/checkpoints/last.pt" in log, log
    assert "(restart 3)" not in log and "NOT requeued" not in log
    _assert_equal(model_state(run_dir / "checkpoints" / "last.pt"), ref)

def test_without_slurm_dry_run_prints_and_submit_refuses(cli_run, tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "nocluster")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, sinfo or scontrol
    r = submit(cli_run, spec, "--time", "1:00:00", "--gpus-per-node", "4", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --gpus-per-node=4" in r.stdout and "#SBATCH --ntasks-per-node=4" in r.stdout
    assert "not checked against a cluster" in r.stdout + r.stderr
    r = submit(cli_run, spec, "--time", "1:00:00")
    assert r.returncode == 2 and "sbatch, sinfo and scontrol are not on the PATH" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_requeue_limits_are_said_in_the_log(tmp_path, capfd, monkeypatch):
    """The stops of one job at the same step are counted; at the limit (or at --max-requeues) the job is not
    requeued and the log says why (no scontrol is called then)."""
    from plugtrain.core.errors import Stopped

    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # a requeue attempt would fail loudly: none may be made
    assert not worker._after_stop(Stopped(signal.SIGUSR1, last, 7), "", 0, 20)
    assert "not in a SLURM job" in capfd.readouterr().out
    assert worker._record_stop(last.parent.parent, "42", 1, 7) == 1  # another job's record does not count
    assert worker._record_stop(last.parent.parent, "42", 2, 7) == 2
    assert not worker._after_stop(Stopped(signal.SIGTERM, last, 7), "42", 3, 20)
    out = capfd.readouterr().out
    assert "stopped by SIGTERM at step 7; NOT requeued: the job stopped 3 times in a row at this step without " \
           f"progress (limit {job.STALL_LIMIT})" in out, out
    assert not worker._after_stop(Stopped(signal.SIGUSR1, last, 9), "42", 20, 20)
    out = capfd.readouterr().out
    assert "NOT requeued: job 42 was requeued 20 time(s) already (--max-requeues 20)" in out, out


@pytest.mark.slow
def test_warning_signals_stop_a_run_at_a_step_boundary(tmp_path, monkeypatch, one_torch_thread):
    """SIGUSR1, a signal named in PLUGTRAIN_STOP_SIGNALS, and one held while the run was being built
    (hold_stop_signals, as the SLURM worker does) each stop the run with last.pt at a step boundary; the handlers
    are put back afterwards."""
    from plugtrain.core.errors import Stopped

    class Send:
        def __init__(self, signum: int) -> None:
            self.signum = signum

        def on_epoch_end(self, trainer, epoch, metrics):
            os.kill(os.getpid(), self.signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setenv("PLUGTRAIN_STOP_SIGNALS", "USR2")
    for k, signum in enumerate((signal.SIGUSR1, signal.SIGUSR2)):
        spec = tiny_spec(tmp_path, f"sig{k}", epochs=2, steps=2)
        with pytest.raises(Stopped) as info:
            session.run(str(spec), callbacks=[Send(signum)])
        assert (info.value.signum, info.value.step, info.value.exit_code) == (signum, 2, 128 + signum)
        assert Path(info.value.checkpoint).is_file()
    assert {s: signal.getsignal(s) for s in before} == before
    try:
        session.hold_stop_signals()
        os.kill(os.getpid(), signal.SIGUSR1)  # while "building": kept, not fatal
        spec = tiny_spec(tmp_path, "held", epochs=2, steps=2)
        with pytest.raises(Stopped) as info:
            session.run(str(spec))
        assert (info.value.signum, info.value.step) == (signal.SIGUSR1, 1)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
