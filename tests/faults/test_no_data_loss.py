"""Issue 12, class 1: nothing a user types loses a run.

``--overwrite`` keeps the old run intact until the new one has passed everything that can fail before training
(the pre-flight, the loggers), then replaces it whole; ``--resume auto`` starts from scratch only where nothing is lost
(no directory, an empty one, an elastic restart before the job's first checkpoint) and otherwise refuses, exit 2.
Every test compares the checksum of every file of the old run before and after.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def checksums(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (folders by their trailing slash)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel + ("/" if p.is_dir() else "")] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
    return out


def siblings(run_dir: Path) -> list[str]:
    """What else than the run directory its parent holds (leftovers of a start)."""
    return sorted(p.name for p in run_dir.parent.iterdir() if p != run_dir)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def old_run(tmp_path):
    """A finished tiny run (``runs/tiny``) with a note of the user's in it; returns (spec, run dir, checksums)."""
    spec = tiny_spec(tmp_path, epochs=1, steps=2)
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "my-notes.txt").write_text("results of the first try\n")
    return spec, run_dir, checksums(run_dir)


@pytest.mark.parametrize("failure", [
    # the pre-flight: a class weight per class of another dataset fails the loss on the first batch
    ["--set", "loss.weight=[1.0, 2.0]"],
    # the loggers, built once the new directory is in place: a TensorBoard folder where spec.toml is (a file)
    ["--set", 'loggers=[{ name = "tensorboard", subdir = "spec.toml" }]'],
], ids=["preflight", "loggers"])
def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(old_run, failure, capfd):
    spec, run_dir, before = old_run
    capfd.readouterr()
    assert cli("train", spec, "--overwrite", *failure) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("plugtrain: error:") == 1, err
    assert checksums(run_dir) == before  # every file of the old run, byte for byte
    assert siblings(run_dir) == []  # no half-written directory beside it


def test_overwrite_replaces_the_old_run_whole(old_run):
    spec, run_dir, before = old_run
    assert cli("train", spec, "--overwrite", "--set", "run.seed=1") == 0
    after = checksums(run_dir)
    assert "my-notes.txt" not in after  # the old directory went, not just the files the new run rewrote
    assert {"spec.toml", "env.json", "metrics.csv", "checkpoints/last.pt"} <= set(after)
    assert after["checkpoints/last.pt"] != before["checkpoints/last.pt"]
    assert siblings(run_dir) == []


def test_resume_auto_without_last_pt_refuses_and_changes_nothing(old_run, capfd):
    spec, run_dir, _ = old_run
    (run_dir / "checkpoints" / "last.pt").unlink()  # best.pt, metrics.csv, env.json stay
    before = checksums(run_dir)
    capfd.readouterr()
    assert cli("train", spec, "--resume", "auto") == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("plugtrain: error:") == 1, err
    assert "no checkpoints/last.pt" in err and "--overwrite" in err and "best.pt" in err, err
    assert checksums(run_dir) == before
    # what the message proposes works: continue from best.pt, in the same directory (one more epoch)
    assert cli("train", spec, "--resume", run_dir / "checkpoints" / "best.pt", "--set", "run.epochs=2") == 0
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "my-notes.txt").is_file()


@pytest.mark.parametrize("state", ["absent", "empty"])
def test_resume_auto_starts_fresh_where_nothing_is_lost(tmp_path, state, capfd):
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    run_dir = tmp_path / "runs" / "tiny"
    if state == "empty":
        run_dir.mkdir(parents=True)
    capfd.readouterr()
    assert cli("train", spec, "--resume", "auto") == 0
    assert "nothing to resume" in capfd.readouterr().out
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert siblings(run_dir) == []


def test_elastic_restart_before_the_first_checkpoint_starts_again_but_never_over_another_run(tmp_path, monkeypatch,
                                                                                            capfd):
    """A torchrun group restarted (TORCHELASTIC_RESTART_COUNT > 0) before its first checkpoint finds only what its
    own first start wrote: it starts again. The same directory written by another job is never replaced."""
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    run_dir = tmp_path / "runs" / "tiny"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    assert cli("train", spec) == 0
    assert json.loads((run_dir / "env.json").read_text())["torchelastic_run_id"] == "job-1"
    # what the first start of the job had written when its worker died before the first checkpoint
    for p in (run_dir / "checkpoints").iterdir():
        p.unlink()
    (run_dir / "metrics.csv").unlink()
    before = checksums(run_dir)

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")  # another job: its files are not this job's to replace
    capfd.readouterr()
    assert cli("train", spec) == 2
    assert "no checkpoints/last.pt" in capfd.readouterr().err
    assert checksums(run_dir) == before

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")  # the same job: nothing of anyone's is lost
    assert cli("train", spec) == 0
    assert "elastic restart before the first checkpoint" in capfd.readouterr().out
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_elastic_restart_of_an_overwrite_run_continues_it(old_run, monkeypatch):
    """``--overwrite`` on the command line of an elastic job: a restarted group continues (it must not refuse
    because --resume auto and --overwrite exclude each other, nor replace the run again)."""
    spec, run_dir, _ = old_run
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    before = checksums(run_dir)
    assert cli("train", spec, "--overwrite", "--set", "run.epochs=2") == 0
    assert (run_dir / "my-notes.txt").is_file()  # continued in place, not replaced
    assert checksums(run_dir)["checkpoints/last.pt"] != before["checkpoints/last.pt"]


def test_resume_path_into_another_run_refuses_and_changes_nothing(old_run, tmp_path, capfd):
    spec, run_dir, before = old_run
    other = tiny_spec(tmp_path / "other.toml", name="other", output_dir=tmp_path / "elsewhere", epochs=1, steps=1)
    assert cli("train", other) == 0
    capfd.readouterr()
    assert cli("train", spec, "--resume", tmp_path / "elsewhere" / "other" / "checkpoints" / "last.pt") == 2
    assert "already holds another run" in capfd.readouterr().err
    assert checksums(run_dir) == before


def test_an_interrupted_overwrite_leaves_the_old_run_aside_and_nothing_deletes_it(old_run, capfd):
    """A process killed between renaming the old run aside and finishing its start: the next start refuses and
    says where the old run is; nothing is deleted."""
    spec, run_dir, before = old_run
    aside = run_dir.parent / f".tiny.plugtrain-old-{dead_pid()}"
    run_dir.rename(aside)
    capfd.readouterr()
    for extra in ([], ["--overwrite"], ["--resume", "auto"]):
        assert cli("train", spec, *extra) == 2
        assert f"mv {aside} {run_dir}" in capfd.readouterr().err
    assert checksums(aside) == before and not run_dir.exists()


def test_a_start_killed_before_its_directory_was_in_place_leaves_nothing_behind(tmp_path):
    """A staged directory of a dead process (``.NAME.plugtrain-new-PID``) holds only what that start wrote: the
    next start removes it."""
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    staged = tmp_path / "runs" / f".tiny.plugtrain-new-{dead_pid()}"
    (staged / "checkpoints").mkdir(parents=True)
    (staged / "spec.toml").write_text("# half a start\n")
    assert cli("train", spec) == 0
    assert siblings(tmp_path / "runs" / "tiny") == []


def test_an_elastic_restart_of_a_resume_path_run_continues_from_its_own_checkpoints(old_run, tmp_path, monkeypatch):
    """``--resume PATH`` into a new directory under torchrun: a restarted group continues from the new directory's
    last.pt once there is one, and starts again from PATH over what its own first start wrote before it."""
    spec, run_dir, _ = old_run
    source = tmp_path / "source.pt"
    source.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    args = ("train", spec, "--resume", source, "--set", 'run.name="continued"', "--set", "run.epochs=2")
    assert cli(*args) == 0
    continued = tmp_path / "runs" / "continued"
    (continued / "checkpoints" / "last.pt").unlink()
    (continued / "checkpoints" / "best.pt").unlink(missing_ok=True)
    (continued / "metrics.csv").unlink()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert cli(*args) == 0  # its own first start's files only: again from PATH
    assert (continued / "checkpoints" / "last.pt").is_file()
    before = checksums(continued)
    assert cli(*args, "--set", "run.epochs=3") == 0  # now from its own last.pt, not from PATH again
    after = torch_load(continued / "checkpoints" / "last.pt")
    assert after["epoch"] == 3 and checksums(continued)["checkpoints/last.pt"] != before["checkpoints/last.pt"]


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_resume_that_cannot_start_leaves_the_run_as_it_was(old_run, capfd):
    """``--resume auto`` rewrites spec.toml and env.json in place; when its loggers then fail, both are put back."""
    spec, run_dir, before = old_run
    capfd.readouterr()
    assert cli("train", spec, "--resume", "auto", "--set", "run.epochs=2",
               "--set", 'loggers=[{ name = "tensorboard", subdir = "spec.toml" }]') == 2
    assert "Traceback" not in capfd.readouterr().err
    assert checksums(run_dir) == before
