"""DDP under a real ``torchrun`` (gloo on CPU): 2 processes with batch B each train exactly like 1 process with
batch 2B on a model without batch-norm; validation is sharded without padding; only rank 0 prints and writes."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from conftest import cli, max_rel_diff, run_torchrun


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process_with_the_doubled_batch(tmp_path, one_torch_thread):
    # test_efficientnet_ln: layer norm, no batch-norm, no dropout. Its stem and first blocks are frozen for the
    # first epoch and unfrozen by the callback the backbone asks for: DDP must be rebuilt to reduce their gradients.
    common = dict(backbone="test_efficientnet_ln", epochs=2, steps=3, log_every=1,
                  backbone_params='freeze = ["conv_stem", "blocks.0"]\nunfreeze_after_epochs = 1')
    from conftest import tiny_spec

    two = tiny_spec(tmp_path, "two", tmp_path / "runs", batch_size=8, **common)
    one = tiny_spec(tmp_path, "one", tmp_path / "runs", batch_size=16, **common)

    proc = run_torchrun(2, "train", two, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert cli("train", one) == 0

    # only rank 0 prints: one banner, one summary, one line per step and per epoch
    out = proc.stdout
    assert len(re.findall(r"^two: starting;", out, re.M)) == 1 and "2 process(es)" in out
    assert len(re.findall(r"^two: done in", out, re.M)) == 1
    assert len(re.findall(r"^epoch \d/2  step ", out, re.M)) == 6
    assert len(re.findall(r"^epoch \d/2  train/loss=", out, re.M)) == 2
    assert "\x1b" not in out

    run2, run1 = tmp_path / "runs" / "two", tmp_path / "runs" / "one"
    assert json.loads((run2 / "env.json").read_text())["world_size"] == 2
    pids = {p.name.split(".")[-2] for p in (run2 / "tb").glob("events.out.tfevents.*")}
    assert len(pids) == 1  # one process wrote TensorBoard

    s2 = torch.load(run2 / "checkpoints" / "last.pt", weights_only=True)
    s1 = torch.load(run1 / "checkpoints" / "last.pt", weights_only=True)
    assert s2["global_step"] == s1["global_step"] == 6 and len(s2["rng"]) == 2  # every rank's RNG state
    diff = max_rel_diff(s2["model"], s1["model"])
    print(f"max relative difference of the final weights, 2 x 8 vs 1 x 16: {diff:.3g}")
    assert diff <= 1e-5
    assert s2["frozen"] == s1["frozen"] == []
    from plugtrain.core.registry import get_registry

    torch.manual_seed(0)
    init = get_registry().get("backbones", "test_efficientnet_ln").build({"in_chans": 1}, num_classes=10)
    assert not torch.equal(s2["model"]["conv_stem.weight"], init.state_dict()["conv_stem.weight"])  # unfrozen

    # metrics reduced across ranks equal the single process's (the losses to float precision; a count may differ
    # by one borderline sample between weights 1e-6 apart); validation is not padded (359 samples, odd)
    rows2, rows1 = read_csv(run2 / "metrics.csv"), read_csv(run1 / "metrics.csv")
    assert len(rows2) == len(rows1) == 2
    for r2, r1 in zip(rows2, rows1, strict=True):
        for key in ("train/loss", "val/loss"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-5), key
        for key in ("val/accuracy", "val/top5"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), abs=1.01 / 359), key
        correct = float(r2["val/accuracy"]) * 359
        assert correct == pytest.approx(round(correct), abs=1e-3)  # a count out of 359, not 360
        assert float(r2["train/throughput"]) > 0



@pytest.mark.slow
def test_sync_batchnorm_on_cpu_is_refused_before_anything_is_written(tmp_path, one_torch_thread):
    """torch's SyncBatchNorm runs on CUDA only: under torchrun on CPU the request is bad input (exit 2, one message
    per rank, no run directory), not a crash in the first forward pass."""
    from conftest import tiny_spec

    spec = tiny_spec(tmp_path, "synced", tmp_path / "runs", backbone="test_efficientnet", batch_size=8, epochs=1,
                     steps=2, extra="sync_batchnorm = true")
    proc = run_torchrun(2, "train", spec, timeout=400)
    assert proc.returncode != 0
    assert "sync_batchnorm = true needs CUDA devices" in proc.stderr, proc.stderr[-3000:]
    assert 'plugtrain/core' not in proc.stderr  # the workers print their line, no traceback (torchrun adds its own)
    assert not (tmp_path / "runs" / "synced").exists()
    assert cli("train", spec, "--set", "trainer.max_steps_per_epoch=1") == 0  # one process: nothing to sync
