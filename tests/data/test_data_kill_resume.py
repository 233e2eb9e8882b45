"""SIGKILL and ``--resume auto`` with the decoded-sample cache and with WebDataset shards (issue 17): bitwise the
training of an uncached image-folder run.

Real ``plugtrain train`` child processes (timm ``test_resnet`` at 16x16 on an image folder of PNGs and JPEGs of
several sizes, 2 DataLoader workers, dropout, a mid-epoch ``last.pt`` every 2 steps) are killed with SIGKILL in the
middle of an epoch and resumed. One reference run reads the folder without a cache; the memory-cached run and the
run on shards written from the folder by ``plugtrain shards`` (with a disk cache on top) must end with bitwise its
weights, optimizer state and metric history: the same pixels, the same samples, the same order.
"""

from __future__ import annotations

import csv
import random
import re
import signal
from pathlib import Path

import pytest
from conftest import cli
from helpers_data import folder_spec, shm_files, write_folder
from helpers_faults import Run, assert_same_training_state, load, plugtrain_cmd, report

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 4
TRAINER = {"checkpoint_every_steps": 2, "max_steps_per_epoch": STEPS}


def _spec(tmp: Path, name: str, data: dict) -> Path:
    return folder_spec(tmp / f"{name}.toml", tmp / "runs", data, run={"name": name, "epochs": EPOCHS},
                       trainer=TRAINER)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    root = write_folder(tmp / "images", per_class=16)
    ref = _spec(tmp, "reference", {"dataset": "imagefolder", "root": str(root)})
    run = Run(plugtrain_cmd("train", ref))
    assert run.finish() == 0, run.output
    report("reference run (uncached imagefolder)", seconds=round(run.seconds, 1))
    return tmp, root, tmp / "runs" / "reference"


def _kill_and_resume(spec: Path, run_dir: Path, seed: int) -> tuple[int, Run]:
    step = random.Random(seed).choice([s for s in range(3, 2 * STEPS) if s % STEPS])
    run = Run(plugtrain_cmd("train", spec))
    run.wait_for(rf"global_step {step}\b")
    run.kill(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    first = load(run_dir / "checkpoints" / "last.pt")
    # Killed mid-run: the process may run a step or two past the line it printed before SIGKILL lands (a loaded
    # machine), so the checkpoint can be later than ``step``, but the run must not have finished.
    assert 0 < first["global_step"] < EPOCHS * STEPS, first["global_step"]
    resumed = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
    assert resumed.finish() == 0, resumed.output
    assert "resuming from" in resumed.output
    return step, resumed


def _accuracy(run_dir: Path) -> list[str]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row["val/accuracy"] for row in csv.DictReader(f)]


def test_sigkill_and_resume_with_the_memory_cache_is_bitwise_the_uncached_run(setup):
    tmp, root, reference = setup
    spec = _spec(tmp, "cached", {"dataset": "imagefolder", "root": str(root), "cache": "memory"})
    run_dir = tmp / "runs" / "cached"
    step, resumed = _kill_and_resume(spec, run_dir, 1)
    # the resumed run found the killed run's cache in /dev/shm, partly filled, and used it
    line = next(ln for ln in resumed.lines if "imagefolder-train cache (memory)" in ln)
    assert "already decoded" in line and " 0 of " not in line
    data = re.search(r" in (/dev/shm/\S+\.data);", line)[1]
    tensors = assert_same_training_state(run_dir / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert _accuracy(run_dir) == _accuracy(reference)
    assert not shm_files(Path(data).name.replace(".data", ".*")), "the finished run left its cache in /dev/shm"
    report("memory cache: kill and resume", killed_at_step=step, tensors_bitwise_equal=tensors)


def test_shards_written_from_the_folder_train_bitwise_like_it_through_kill_and_resume(setup):
    tmp, root, reference = setup
    assert cli("shards", tmp / "reference.toml", "--out", tmp / "shards", "--shard-size", 7) == 0
    spec = _spec(tmp, "sharded", {"dataset": "webdataset", "shards": str(tmp / "shards"), "cache": "disk",
                                  "cache_dir": str(tmp / "cache")})
    run_dir = tmp / "runs" / "sharded"
    step, resumed = _kill_and_resume(spec, run_dir, 2)
    tensors = assert_same_training_state(run_dir / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert _accuracy(run_dir) == _accuracy(reference)  # the same accuracy: the same model
    assert len(list((tmp / "cache" / "decoded").glob("webdataset-train-*.data"))) == 1
    report("webdataset + disk cache: kill and resume", killed_at_step=step, tensors_bitwise_equal=tensors,
           val_accuracy=_accuracy(run_dir)[-1])
