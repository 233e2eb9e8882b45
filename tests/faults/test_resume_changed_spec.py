"""Issue 21: a resumed run trains what its run directory says.

* A spec changed in what a resume cannot change (data, model, loss, optimizer, seed, augmentations, fewer epochs,
  another global batch) is refused, exit 2, before anything is written: one message listing every difference as
  ``key: old -> new`` and how to go on; the run directory stays byte-identical.
* More epochs are allowed: the scheduler is rebuilt for the new length (no lr of 0.0 for the added epoch; a per-step
  schedule continues exactly as a run of the new length would), ``spec.toml`` stays what trained the run and the
  accepted spec is kept as ``spec.resume-N.toml``; an unchanged resume writes no new spec and stays exact.
* Any file that is no checkpoint (text, empty, a cut-short archive, a pickle, random bytes) given to ``--resume`` is
  exit 2 with one message naming it.
* A run stopped at once by a second Ctrl-C, before its first checkpoint, suggests a command that works.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_spec
from helpers_faults import Run, child_env, plugtrain_cmd, write_spec

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import checkpoint as ckpt

LR = 3e-3  # the tiny spec's optimizer.lr


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
            for p in sorted(root.rglob("*"))} if root.exists() else {}


def one_error(proc) -> str:
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both
    assert "Traceback" not in both, both
    assert proc.stderr.count("plugtrain: error:") == 1, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_torch_thread):
    """A finished tiny run of 2 epochs x 3 steps (cosine schedule over the run, epoch checkpoints), trained in this
    process; its spec names ``output_dir = "runs"`` relative to the working directory, the folder returned."""
    import os

    from conftest import cli

    folder = tmp_path_factory.mktemp("finished")
    tiny_spec(folder, "t", "runs", epochs=2, steps=3, extra="checkpoint_every_epochs = 1")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert cli("train", "t.toml") == 0
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def run_copy(finished, tmp_path, cli_run):
    """A copy of the finished run's folder: (train, its run dir); ``train(ARGS...)`` runs the CLI in the copy."""
    shutil.copytree(finished, tmp_path / "w")

    def train(*args):
        return cli_run("train", "t.toml", *args, cwd=tmp_path / "w")

    return train, tmp_path / "w" / "runs" / "t"


REFUSED = {
    "optimizer-lr": (["optimizer.lr=0.01"], ["optimizer.lr: 0.003 -> 0.01"]),
    "data-param": (["data.upscale=2"], ["data.upscale: (not set) -> 2"]),
    "seed-and-backbone": (["run.seed=1", 'backbone.name="test_resnet"'],
                          ["run.seed: 0 -> 1", 'backbone.name: "test_efficientnet" -> "test_resnet"']),
    "augmentations": (["augmentations.train=[]"], ["augmentations.train: [{", "-> []"]),
    "fewer-epochs": (["run.epochs=1"], ["run.epochs: 2 -> 1 (a resume may add epochs, not remove them)"]),
    "global-batch": (["data.batch_size=8"], ["data.batch_size: 16 -> 8 (the global batch"]),
    "allowed-with-refused": (["run.epochs=3", "trainer.log_every_steps=5", "loss.label_smoothing=0.1"],
                             ["loss.label_smoothing: (not set) -> 0.1"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_change_lists_every_difference_and_leaves_the_run_byte_identical(run_copy, cli_run, name):
    train, run_dir = run_copy
    sets, lines = REFUSED[name]
    before = tree(run_dir)
    args = [a for s in sets for a in ("--set", s)]
    err = one_error(train("--resume", "auto", *args))
    assert "--resume auto: the spec differs from the one that trained runs/t in what a resume cannot change" in err
    for line in lines:
        assert line in err, err
    assert "run.epochs: 2 -> 3" not in err and "log_every_steps" not in err.split("A resume continues")[0], err
    assert '--set run.name="..."' in err and "--overwrite" in err and "(runs/t/spec.toml)" in err, err
    assert tree(run_dir) == before


def test_resume_path_with_a_changed_spec_is_refused_and_creates_nothing(run_copy, cli_run, tmp_path):
    train, run_dir = run_copy
    source = run_dir / "checkpoints" / "epoch-0001.pt"
    err = one_error(train("--resume", source, "--set", 'run.name="other"',
                            "--set", "optimizer.weight_decay=0.0"))
    assert f"--resume {source}: the spec differs" in err and "optimizer.weight_decay: 0.05 -> 0.0" in err, err
    assert "run.name" not in err.split("A resume continues")[0], err  # where the run lives may change
    assert not (run_dir.parent / "other").exists()


def test_more_epochs_rebuild_the_schedule_and_keep_the_spec_history(run_copy, cli_run):
    train, run_dir = run_copy
    spec_bytes = (run_dir / "spec.toml").read_bytes()
    proc = train("--resume", "auto", "--set", "run.epochs=3", "--set", "trainer.log_every_steps=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    assert "train/lr" in header and last["epoch"] == "3"
    # cosine over the 3 epochs now: the added epoch trains at lr * (1 + cos(2 pi / 3)) / 2, not at the old end's 0.0
    assert float(last["train/lr"]) == pytest.approx(LR * (1 + math.cos(2 * math.pi / 3)) / 2, rel=1e-6)
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    assert state["scheduler"]["T_max"] == 3 and state["global_step"] == 9
    assert (run_dir / "spec.toml").read_bytes() == spec_bytes  # what trained the first two epochs
    resumed = (run_dir / "spec.resume-1.toml").read_text()
    assert "run.epochs: 2 -> 3" in resumed.splitlines()[0] and re.search(r"^epochs = 3$", resumed, re.M)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["resumes"][-1]["spec"] == "spec.resume-1.toml"
    assert env["resumes"][-1]["changed"] == {"run.epochs": [2, 3], "trainer.log_every_steps": [1, 2]}
    assert env["resumes"][-1]["checkpoint"] == "runs/t/checkpoints/last.pt"
    # the next resume compares with what trained the run last (3 epochs), and records the next change as resume 2
    proc = train("--resume", "auto", "--set", "run.epochs=4", "--set", "trainer.log_every_steps=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^epochs = 4$", (run_dir / "spec.resume-2.toml").read_text(), re.M)
    assert ckpt.load(run_dir / "checkpoints" / "last.pt")["scheduler"]["T_max"] == 4


def test_unchanged_resume_writes_no_spec_and_stays_exact(run_copy, cli_run, tmp_path):
    """From the epoch-1 checkpoint with the same spec (only the run's name differs): bitwise the uninterrupted run;
    a resume in place with an unchanged spec leaves spec.toml as it was and writes no spec.resume-N.toml."""
    train, run_dir = run_copy
    source = run_dir / "checkpoints" / "epoch-0001.pt"
    proc = train("--resume", source, "--set", 'run.name="again"')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = ckpt.load(run_dir.parent / "again" / "checkpoints" / "last.pt")
    reference = ckpt.load(run_dir / "checkpoints" / "last.pt")
    for part in ("model", "loss"):
        assert again[part].keys() == reference[part].keys()
        assert all(torch.equal(again[part][k], reference[part][k]) for k in reference[part]), part
    spec_bytes = (run_dir / "spec.toml").read_bytes()
    proc = train("--resume", "auto")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run_dir / "spec.toml").read_bytes() == spec_bytes
    assert not list(run_dir.glob("spec.resume-*.toml"))
    assert json.loads((run_dir / "env.json").read_text())["resumes"][-1]["changed"] == {}


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_a_per_step_schedule_extended_continues_as_a_run_of_the_new_length(tmp_path, cli_run, one_torch_thread):
    one_cycle = ["--set", 'scheduler.name="OneCycleLR"']
    spec = tiny_spec(tmp_path, "s", tmp_path / "runs", epochs=2, steps=3)
    assert cli_run("train", spec, *one_cycle).returncode == 0
    proc = cli_run("train", spec, *one_cycle, "--set", "run.epochs=3", "--resume", "auto")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cli_run("train", spec, *one_cycle, "--set", "run.epochs=3", "--set", 'run.name="ref"').returncode == 0
    got = _scalars(tmp_path / "runs" / "s")["step/lr"]
    want = _scalars(tmp_path / "runs" / "ref")["step/lr"]
    assert sorted(got) == list(range(1, 10))
    for step in (7, 8, 9):  # the steps after the resume: the 9-step one-cycle schedule, not the 6-step one's end
        assert got[step] == pytest.approx(want[step], rel=1e-9), (step, got[step], want[step])
    assert got[7] > 10 * got[6]


# -- item 6: whatever --resume is given that is no checkpoint ----------------------------------------------------
def _zip_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": ckpt.FORMAT, "model": {"w": torch.zeros(64)}}, buf)
    return buf.getvalue()


def _legacy_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(16)}}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


NOT_CHECKPOINTS = {
    "text": b"epoch 3 looked good; keep these notes\n",  # the unpickler's KeyError 101 ('e')
    "text-index": b"qJsX",  # IndexError
    "text-struct": b"r&y>",  # struct.error
    "unicode": b"c\xe8\xff\n\xfe\n",  # UnicodeDecodeError
    "empty": b"",
    "one-byte": b"\x89",  # EOFError
    "truncated-zip": _zip_checkpoint()[:700],
    "zip-cut-at-the-end": _zip_checkpoint()[:-30],
    "truncated-legacy": _legacy_checkpoint()[:100],
    "pickle-of-a-dict": pickle.dumps({"format": ckpt.FORMAT, "model": {}}),
    "pickle-of-an-object": pickle.dumps(Path("x"), protocol=2),
    "json": b'{"format": "plugtrain-checkpoint", "model": {}}',
}


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
def test_a_file_that_is_no_checkpoint_is_one_plugtrain_error_naming_it(tmp_path, name, recwarn):
    path = tmp_path / f"{name}.pt"
    path.write_bytes(NOT_CHECKPOINTS[name])
    for purpose in ("resume", "read"):
        with pytest.raises(PlugtrainError) as info:
            ckpt.load(path, purpose=purpose)
        assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    assert not [w for w in recwarn if "pickle" in str(w.message)], [str(w.message) for w in recwarn]


@pytest.mark.parametrize("name", ["text", "truncated-zip", "pickle-of-a-dict", "empty", "text-struct"])
def test_train_resume_of_a_file_that_is_no_checkpoint_is_exit_2_naming_it(run_copy, cli_run, tmp_path, name):
    train, run_dir = run_copy
    path = tmp_path / f"{name}.pt"
    path.write_bytes(NOT_CHECKPOINTS[name])
    before = tree(run_dir)
    err = one_error(train("--resume", path, "--set", 'run.name="other"'))
    assert str(path) in err and "KeyError" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # no warning printed beside it
    assert not (run_dir.parent / "other").exists() and tree(run_dir) == before


# -- item 7: a double Ctrl-C suggests a command that works -------------------------------------------------------
@pytest.mark.slow
def test_a_double_ctrl_c_suggests_a_command_that_works(tmp_path, cli_run):
    """Ctrl-C twice in the first epoch (a real child process, real SIGINTs): the run stops at once. What it prints
    and what a plain ``train`` of the same spec then says must be a command that works: ``--resume auto`` only when
    a ``last.pt`` was written before the second Ctrl-C landed, ``--overwrite`` otherwise (``--resume auto`` would be
    refused: nothing to continue). Either may happen, by the timing of the signals; both are checked as they come."""
    spec = write_spec(tmp_path / "c.toml", tmp_path / "runs", run={"name": "c", "epochs": 1},
                      backbone={"name": "resnet10t", "in_chans": 1, "drop_rate": 0.0},
                      data={"image_size": 64, "batch_size": 16}, loggers=[{"name": "csv"}, {"name": "console"}],
                      trainer={"max_steps_per_epoch": 6, "log_every_steps": 1})
    run_dir = tmp_path / "runs" / "c"
    run = Run(plugtrain_cmd("train", spec), env=child_env())
    run.wait_for(r"global_step 1\b")
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.03)
    run.proc.send_signal(signal.SIGINT)
    code = run.wait()
    assert code == 130, run.output
    assert "Traceback" not in run.output, run.output
    said = next(line for line in run.lines if line.startswith("interrupted by SIGINT"))
    err = one_error(cli_run("train", spec))
    if (run_dir / "checkpoints" / "last.pt").exists():
        assert "--resume auto" in said, said
        assert "--resume auto" in err, err
        assert cli_run("train", spec, "--resume", "auto").returncode == 0
    else:
        assert "before any checkpoint was written" in said and "--overwrite" in said and "--resume auto" not in said
        assert "--resume auto" not in err and "--overwrite" in err, err
        assert cli_run("train", spec, "--overwrite").returncode == 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_a_plain_start_over_a_run_without_last_pt_does_not_suggest_resume_auto(run_copy, cli_run):
    train, run_dir = run_copy
    (run_dir / "checkpoints" / "last.pt").unlink()
    err = one_error(train())
    assert "--resume auto" not in err and "--overwrite" in err and "best.pt" in err, err
    best = re.search(r"--resume (\S+best\.pt)", err)
    assert best is not None, err
    assert train("--resume", best.group(1), "--set", "run.epochs=3").returncode == 0


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("POSIX signals")
