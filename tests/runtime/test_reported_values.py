"""What a user is shown is what the training did (issue 13): the lr of each step, per-step curves at the right global
steps, the gradient norm before clipping, the DDP step loss over every rank, SWA's figures in metrics.csv and
TensorBoard, console numbers with significant digits. Everything is read back from the files a run writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import cli, run_cli, run_torchrun


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of a run's TensorBoard events, read with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


STEP_SCHEDULE = """
[scheduler]
name = "CosineAnnealingLR"
interval = "step"
T_max = 8
warmup_steps = 3
warmup_start_factor = 0.2
"""


def test_the_logged_lr_of_step_k_is_the_lr_step_k_used(spec_factory, tmp_path, one_torch_thread):
    spec = spec_factory(epochs=2, steps=4, log_every=1)
    text = spec.read_text()
    start = text.index("[scheduler]")
    spec.write_text(text[:start] + text[text.index("[augmentations]"):] + STEP_SCHEDULE)
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    got = scalars(run_dir)["step/lr"]
    # The lr each optimizer step used: torch's cosine schedule stepped per step, times the linear warmup factor.
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    for k in range(8):
        factor = 0.2 + 0.8 * k / 3 if k < 3 else 1.0
        assert got[k + 1] == pytest.approx(opt.param_groups[0]["lr"] * factor, rel=1e-6), k + 1
        opt.step()
        sched.step()
    by_epoch = rows(run_dir)
    assert float(by_epoch[0]["train/lr"]) == pytest.approx(got[4], rel=1e-6)  # the epoch's last step's lr
    assert float(by_epoch[1]["train/lr"]) == pytest.approx(got[8], rel=1e-6)


def test_per_step_curves_at_the_log_interval_with_the_gradient_norm_before_clipping(spec_factory, tmp_path,
                                                                                      one_torch_thread):
    spec = spec_factory(epochs=2, steps=5, log_every=2, extra="clip_grad_norm = 0.001")
    assert cli("train", spec) == 0
    tb = scalars(tmp_path / "runs" / "tiny")
    for tag in ("step/loss", "step/lr", "step/grad_norm", "step/throughput"):
        assert sorted(tb[tag]) == [1, 2, 4, 6, 8, 10], tag  # the first step, then every 2 optimizer steps
    assert all(v > 0.001 for v in tb["step/grad_norm"].values())  # measured before clipping to 0.001
    assert all(math.isfinite(v) and v > 0 for v in tb["step/loss"].values())
    assert sorted(tb["train/loss"]) == [5, 10]  # the epoch aggregates stay once per epoch
    data, compute, step = (tb[f"train/{k}_time"] for k in ("data", "compute", "step"))
    for s in (5, 10):  # the loop's time per step is waiting for data plus computing
        assert data[s] + compute[s] == pytest.approx(step[s], rel=0.05)


def test_a_second_parameter_group_is_reported(spec_factory, tmp_path, one_torch_thread):
    spec = spec_factory(epochs=1, steps=2, log_every=1, extra="")
    spec.write_text(spec.read_text().replace('weight_decay = 0.05\n', 'weight_decay = 0.05\nno_decay_norm_bias = true\n'))
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert "train/lr_1" in rows(run_dir)[0] and "step/lr_1" in scalars(run_dir)


@pytest.mark.slow
def test_ddp_step_loss_is_the_loss_of_the_global_batch(tmp_path):
    """2 processes x 8 samples log the step loss of the 16-sample global batch: the single-process loss of the
    doubled batch (a LayerNorm model: no batch statistics differ)."""
    from conftest import tiny_spec

    two = tiny_spec(tmp_path, "two", tmp_path / "runs", backbone="test_efficientnet_ln", batch_size=8, steps=3,
                    epochs=1, log_every=1)
    one = tiny_spec(tmp_path, "one", tmp_path / "runs", backbone="test_efficientnet_ln", batch_size=16, steps=3,
                    epochs=1, log_every=1)
    proc = run_torchrun(2, "train", two, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc1 = run_cli("train", one)
    assert proc1.returncode == 0, proc1.stderr[-2000:]
    a, b = scalars(tmp_path / "runs" / "two")["step/loss"], scalars(tmp_path / "runs" / "one")["step/loss"]
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert a[s] == pytest.approx(b[s], abs=1e-5)
    assert rows(tmp_path / "runs" / "two")[0]["data/skipped"] == "0"  # an integer, as in one process
    assert rows(tmp_path / "runs" / "one")[0]["data/skipped"] == "0"


def test_swa_figures_reach_metrics_csv_and_tensorboard(spec_factory, tmp_path, one_torch_thread, capsys):
    spec = spec_factory(epochs=2, steps=3, extra="swa = true\nswa_start_epoch = 1")
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    last = rows(run_dir)[-1]
    assert float(last["val_swa/loss"]) > 0 and "val_swa/accuracy" in last
    assert len(rows(run_dir)) == 2  # merged into the last epoch's row
    assert 2 * 3 in scalars(run_dir)["val_swa/accuracy"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["history"][-1]["val_swa/loss"] == pytest.approx(float(last["val_swa/loss"]))
    # The saved SWA weights are the evaluated ones: their batch-norm statistics were recomputed, not the live model's.
    live = {k: v for k, v in state["model"].items() if k.endswith("running_mean")}
    swa = {k.removeprefix("module."): v for k, v in state["swa"].items() if k.endswith("running_mean")}
    assert live and all(not torch.equal(live[k], swa[k]) for k in live)


def test_console_numbers_keep_significant_digits(spec_factory, capsys, one_torch_thread):
    spec = spec_factory(epochs=1, steps=2)
    spec.write_text(spec.read_text().replace("lr = 3e-3", "lr = 1.5e-5"))
    assert cli("train", spec) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("epoch 1/1  train/loss="))
    assert "train/lr=8.25e-06" in line  # step 2 of a 2-step warmup from 0.1: 1.5e-5 * 0.55, not 0.0000
    assert "data/skipped=0 " in line + " "


@pytest.mark.parametrize(("anneal", "reached"), [(1, True), (10, False)])
def test_swa_lr_is_reached_after_the_anneal_epochs(spec_factory, tmp_path, one_torch_thread, anneal, reached):
    spec = spec_factory(epochs=3, steps=2, extra=f"swa = true\nswa_start_epoch = 1\nswa_lr = 0.01\n"
                                                 f"swa_anneal_epochs = {anneal}")
    assert cli("train", spec) == 0
    lrs = [float(r["train/lr"]) for r in rows(tmp_path / "runs" / "tiny")]
    assert (lrs[1] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.01)) == reached, lrs
