"""Exact resume: a run SIGKILLed in the middle of an epoch and continued with ``--resume auto`` ends bitwise equal to
an uninterrupted run, with everything that draws random numbers or carries state switched on: two DataLoader
workers, albumentations, dropout, mixup / cutmix, gradient accumulation, EMA, a per-step scheduler with warmup."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env, tiny_spec

EXTRA = """\
grad_accum = 2
checkpoint_every_steps = 1
ema = true
ema_decay = 0.9

[mixup]
mixup_alpha = 0.4
cutmix_alpha = 1.0
switch_prob = 0.5
"""
RANDOM_PARTS = dict(epochs=2, steps=5, batch_size=16, num_workers=2, backbone_params="drop_rate = 0.2", extra=EXTRA)
TIMING = ("train/throughput", "train/epoch_time", "train/data_time", "train/compute_time", "train/step_time")


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "plugtrain", "train", *map(str, args)]


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors and plain values are identical (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def metric_rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_is_bitwise_exact(tmp_path):
    env = subprocess_env()
    ref_spec = tiny_spec(tmp_path, "reference", tmp_path / "runs", **RANDOM_PARTS)
    spec = tiny_spec(tmp_path, "killed", tmp_path / "runs", **RANDOM_PARTS)
    ref_dir, run_dir = tmp_path / "runs" / "reference", tmp_path / "runs" / "killed"

    # the run to interrupt: SIGKILL (no chance to clean up) once step 3 of 5 of epoch 1 has been logged
    proc = subprocess.Popen(train_cmd(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(r"global_step 3\b", line):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and 2 <= state["global_step"] <= 4, (state["epoch"], state["global_step"])
    assert state["batch_in_epoch"] == 2 * state["global_step"]  # 2 micro-batches per step: mid-epoch

    resumed = subprocess.run(train_cmd(spec, "--resume", "auto"), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.pt'} at epoch 1, batch {state['batch_in_epoch']}" \
        in resumed.stdout

    reference = subprocess.run(train_cmd(ref_spec), capture_output=True, text=True, env=env, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    got = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    want = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)
    assert got["global_step"] == want["global_step"] == 10
    assert_bitwise_equal(got["model"], want["model"], "model")  # every tensor, bit for bit
    assert_bitwise_equal(got["ema"], want["ema"], "ema")
    assert_bitwise_equal(got["optimizers"], want["optimizers"], "optimizers")
    assert_bitwise_equal(got["scheduler"], want["scheduler"], "scheduler")
    assert_bitwise_equal(got["rng"], want["rng"], "rng")
    # the metrics of every epoch, the interrupted one included (its train/loss is carried in the checkpoint)
    assert metric_rows(run_dir / "metrics.csv") == metric_rows(ref_dir / "metrics.csv")
    assert got["best"] == want["best"]
