"""Kill and resume, signals, and a kill in the middle of a checkpoint write (issue 6, items 1, 4 and 9).

Every run is a real ``plugtrain train`` child process: timm ``test_resnet`` on scikit-learn's digits at 16x16 with
albumentations on the training split, two DataLoader workers, dropout (so that RNG states matter), a mid-epoch
``last.pt`` every 2 steps. The test reads the child's plain progress lines (``global_step N``) and kills it with a
real signal; ``plugtrain train --resume auto`` continues; the final checkpoint must be bitwise equal to the one of an
uninterrupted run (model, loss, optimizer state, the metric history and the best-epoch record).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers_faults import (
    Run,
    assert_same_training_state,
    children,
    load,
    plugtrain_cmd,
    report,
    write_spec,
)

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 4  # 12 optimizer steps; epoch boundaries after steps 4 and 8
RESUME_SPEC = {"data": {"num_workers": 2}, "trainer": {"checkpoint_every_steps": 2, "max_steps_per_epoch": STEPS},
               "run": {"epochs": EPOCHS}}


def _spec(tmp: Path, seed: int, name: str, **more) -> Path:
    sections = {**RESUME_SPEC, **more}
    sections["run"] = {**RESUME_SPEC["run"], "seed": seed, "name": name, **more.get("run", {})}
    return write_spec(tmp / f"{name}.toml", tmp / "runs", **sections)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[int, Path]:
    """``seed -> last.pt`` of an uninterrupted run (seed 0: every test here compares with it)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = {}
    for seed in (0,):
        run = Run(plugtrain_cmd("train", _spec(tmp, seed, f"ref{seed}")))
        assert run.finish() == 0, run.output
        out[seed] = tmp / "runs" / f"ref{seed}" / "checkpoints" / "last.pt"
        report("reference run", seed=seed, seconds=round(run.seconds, 1), global_step=load(out[seed])["global_step"])
    return out


def _last(run_dir: Path) -> dict:
    return load(run_dir / "checkpoints" / "last.pt")


def test_sigkill_mid_epoch_and_at_epoch_boundary_then_resume_is_bitwise_exact(tmp_path, references):
    seed = 0
    rng = random.Random(1000 + seed)
    # inside epoch 1 or 2, after the first mid-epoch checkpoint (step 2) was written
    # (not the last step of epoch 2, so that a kill landing a step late is still before the epoch-2 checkpoint)
    mid_step = rng.choice([s for s in range(3, 2 * STEPS - 1) if s % STEPS])
    boundary_epoch = 2
    spec = _spec(tmp_path, seed, "killed")
    run_dir = tmp_path / "runs" / "killed"
    orphans: list[int] = []

    # 1. SIGKILL at a random step in the middle of an epoch (the process only: its workers must go by themselves).
    run = Run(plugtrain_cmd("train", spec))
    run.wait_for(rf"global_step {mid_step}\b")
    orphans += children(run.pid)
    run.kill(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    first = _last(run_dir)
    # the kill may land a step after the printed line (under load), never before the first checkpoint it waited for
    assert 0 < first["global_step"] < boundary_epoch * STEPS
    assert first["batch_in_epoch"] % STEPS == first["global_step"] % STEPS

    # 2. Resume; SIGKILL right after the epoch line of epoch 2 (validation done, end-of-epoch checkpoint under way).
    run = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
    resumed_at = run.wait_for(r"resuming from .* at epoch (\d+), batch (\d+)")
    assert (int(resumed_at[1]) - 1) * STEPS + int(resumed_at[2]) == first["global_step"]
    run.wait_for(rf"^epoch {boundary_epoch}/{EPOCHS}  train/loss=")
    orphans += children(run.pid)
    run.kill(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    second = _last(run_dir)
    # (equal when the first kill came after the step-6 save and this one before the end-of-epoch save)
    assert first["global_step"] <= second["global_step"] <= boundary_epoch * STEPS

    # 3. Resume to the end.
    run = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
    assert run.finish() == 0, run.output
    tensors = assert_same_training_state(run_dir / "checkpoints" / "last.pt", references[seed])
    best = load(run_dir / "checkpoints" / "best.pt")
    assert best["global_step"] == load(references[seed])["best"]["global_step"]
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + EPOCHS, rows  # one row per epoch, none replayed twice

    time.sleep(0.5)
    alive = [p for p in orphans if os.path.exists(f"/proc/{p}") and "(Z)" not in _state(p)]
    assert not alive, f"DataLoader workers of a killed run still alive: {alive}"
    report("kill and resume", seed=seed, killed_at_step=mid_step, resumed_from_step=first["global_step"],
           killed_after_epoch_line=boundary_epoch, resumed_from_step_2=second["global_step"],
           tensors_bitwise_equal=tensors, max_abs_diff=0.0, orphaned_workers=len(alive))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1][:4]
    except OSError:
        return "(Z)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_checkpoint_at_next_step_and_resume_is_exact(tmp_path, references, sig):
    seed = 0
    step = random.Random(int(sig)).choice([s for s in range(1, EPOCHS * STEPS - 1) if s % STEPS])
    spec = _spec(tmp_path, seed, "signalled")
    run_dir = tmp_path / "runs" / "signalled"
    run = Run(plugtrain_cmd("train", spec))
    run.wait_for(rf"global_step {step}\b")
    t0 = time.monotonic()
    run.kill_group(sig)  # the whole process group, as a scheduler (SLURM) or Ctrl-C does
    code = run.wait()
    seconds = time.monotonic() - t0
    assert code == 128 + sig, run.output
    m = next(line for line in run.lines if line.startswith("interrupted by"))
    assert f"interrupted by {signal.Signals(sig).name} at step " in m and "--resume auto" in m
    assert "Traceback" not in run.output
    state = _last(run_dir)
    stopped = int(m.split(" at step ")[1].split(";")[0])
    # the step boundary after the signal arrived: the test sends it when it reads the "global_step N" line, and on a
    # loaded 2-core machine the process may already be one or two (fast) steps further by then
    assert state["global_step"] == stopped and step <= stopped <= step + 3
    assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]

    resumed = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
    assert resumed.finish() == 0, resumed.output
    tensors = assert_same_training_state(run_dir / "checkpoints" / "last.pt", references[seed])
    report("signal", signal=signal.Signals(sig).name, sent_after_step=step, checkpoint_at_step=stopped,
           exit_code=code, seconds_signal_to_exit=round(seconds, 2), tensors_bitwise_equal=tensors)


def test_sigkill_during_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    """SIGKILL the process while a checkpoint's temporary file is being written (a random number of its bytes
    already on disk), until a kill lands inside a save; the previous ``last.pt`` must be untouched and loadable.

    ``resnet10t`` gives a 40 MB checkpoint (about 80 ms to write and fsync here), written after every step.
    """
    sections = {"backbone": {"name": "resnet10t", "in_chans": 1, "drop_rate": 0.0}, "loggers": [{"name": "csv"}],
                "data": {"num_workers": 0, "batch_size": 8},
                "trainer": {"checkpoint_every_steps": 1, "max_steps_per_epoch": 3, "log_every_steps": 50},
                "run": {"epochs": 2}}
    spec = write_spec(tmp_path / "w.toml", tmp_path / "runs", **{**sections, "run": {"epochs": 2, "name": "w"}})
    ckpt_dir = tmp_path / "runs" / "w" / "checkpoints"
    last = ckpt_dir / "last.pt"
    attempts, landed = 0, None
    rng = random.Random(4)
    while landed is None and attempts < 6:
        attempts += 1
        threshold = rng.randint(1 << 20, 30 << 20)  # kill once this many bytes of a new checkpoint are written
        run = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
        tmp_file = None
        while run.proc.poll() is None and tmp_file is None:
            if last.exists():
                for p in ckpt_dir.glob(f".last.pt.tmp-{run.pid}"):
                    try:
                        written = p.stat().st_size
                    except FileNotFoundError:
                        continue
                    if written >= threshold:
                        before = (last.stat().st_ino, last.stat().st_size)
                        run.kill(signal.SIGKILL)
                        tmp_file = p
            time.sleep(0.0002)
        run.finish()
        if tmp_file is not None and tmp_file.exists():
            landed = (tmp_file, before, tmp_file.stat().st_size)
    assert landed is not None, f"no kill landed inside a save in {attempts} attempts"
    tmp_file, (inode, size), partial = landed
    assert 0 < partial < size  # torn: never renamed over last.pt
    previous = load(last)  # weights_only=True, as plugtrain loads it
    assert (last.stat().st_ino, last.stat().st_size) == (inode, size)  # the kill did not touch last.pt
    assert previous["format"] == "plugtrain-checkpoint"

    run = Run(plugtrain_cmd("train", spec, "--resume", "auto"))
    assert run.finish() == 0, run.output
    assert "partial checkpoint" in run.output and tmp_file.name in run.output
    assert not list(ckpt_dir.glob(".*.tmp-*")), list(ckpt_dir.iterdir())
    final = load(last)
    assert final["global_step"] == 6 and [int(h["epoch"]) for h in final["history"]] == [1, 2]
    report("kill during checkpoint write", attempts=attempts, previous_step=previous["global_step"],
           checkpoint_bytes=size, partial_tmp_bytes=partial, final_step=final["global_step"])


def test_stale_temporary_of_a_live_process_is_kept(tmp_path):
    """Only temporaries of dead processes are removed (a live writer's file is never pulled from under it)."""
    from plugtrain.core.runtime import checkpoint as ckpt

    d = tmp_path / "checkpoints"
    d.mkdir()
    dead = d / ".last.pt.tmp-999999999"
    live = d / f".best.pt.tmp-{os.getpid()}"
    other = d / "notes.tmp-1"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    assert ckpt.remove_stale_temporaries(d) == [dead.name]
    assert live.exists() and other.exists() and not dead.exists()
