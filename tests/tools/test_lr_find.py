"""``plugtrain lr-find`` (issue 25, item 1): the exponential lr range test on the spec's own run, its report folder,
its suggestion (which trains the quickstart within a stated margin of the hand-tuned lr), the process state left as
it was, and the batch-size probe on the CPU.

The quickstart here is specs/quickstart.toml (digits, AdamW, its augmentations) with timm's test_efficientnet at
16 px instead of resnet18 at 32 px, to stay within seconds. Measured: the suggestion (steepest descent) lands within
a factor 3 of the hand-tuned 3e-3, and trains to the same validation accuracy within 0.10 (the margin asserted).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import QUICKSTART, cli, tiny_spec

QUICK = ['backbone.name="test_efficientnet"', "data.image_size=16", "data.num_workers=0", "data.batch_size=32",
         'loggers=[{name="csv"}]']
MARGIN = 0.10  # validation accuracy of the suggested lr >= that of the spec's lr - MARGIN


def _sets(extra: list[str]) -> list[str]:
    return [a for s in QUICK + extra for a in ("--set", s)]


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> dict:
    """lr-find on the quickstart (40 steps), in this process: its output folder, stdout and report."""
    tmp = tmp_path_factory.mktemp("lrfind")
    out = tmp / "report"
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        code = cli("lr-find", QUICKSTART, "--steps", 40, "--out", out,
                   *_sets([f'run.output_dir="{(tmp / "runs").as_posix()}"']))
    return {"code": code, "out": out, "stdout": buf.getvalue(), "tmp": tmp,
            "report": json.loads((out / "lr-find.json").read_text()) if code == 0 else None}


def test_lr_find_reports_a_curve_a_plot_and_the_set_line(found):
    assert found["code"] == 0, found["stdout"]
    r = found["report"]
    lrs, losses = r["lrs"], r["losses"]
    assert len(lrs) == len(losses) == len(r["smoothed"]) and len(lrs) >= 20
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-6)  # exponential
    assert all(math.isfinite(x) for x in losses)
    assert r["rule"] == "steepest descent of the smoothed loss"
    assert 1e-5 < r["suggestion"] < 1.0
    assert r["stopped"].startswith("diverged") or r["stopped"] == "reached max_lr"
    png = (found["out"] / "lr-find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"use: --set optimizer.lr={r['suggestion']:.3g}" in found["stdout"]
    assert "rule: steepest descent" in found["stdout"]
    # nothing else written: no run directory under output_dir, only the report folder
    assert sorted(p.name for p in found["tmp"].iterdir()) == ["report"]
    assert sorted(p.name for p in found["out"].iterdir()) == ["lr-find.json", "lr-find.png"]


@pytest.mark.slow
def test_the_suggested_lr_trains_the_quickstart_within_the_margin_of_the_hand_tuned_lr(found, tmp_path):
    from plugtrain.core.runtime import session

    suggested = found["report"]["suggestion"]
    acc = {}
    for name, lr in (("suggested", suggested), ("hand", 3e-3)):
        result = session.run(str(QUICKSTART), [a for a in _sets([
            f'run.output_dir="{tmp_path.as_posix()}"', f'run.name="{name}"', "run.epochs=2",
            "trainer.max_steps_per_epoch=15", f"optimizer.lr={lr}"]) if a != "--set"])
        acc[name] = result.metrics["val/accuracy"]
    print("val accuracy:", acc, "suggested lr", suggested)
    assert acc["suggested"] >= acc["hand"] - MARGIN, acc


def test_lr_find_leaves_rng_and_torch_switches_as_they_were(tmp_path):
    import torch

    from plugtrain.core.runtime import distributed, lrfind
    from plugtrain.core.spec.loader import load_spec

    spec = load_spec(str(tiny_spec(tmp_path, batch_size=8, steps=2, extra="")))
    torch.manual_seed(1234)
    before = torch.get_rng_state().clone()
    bench = torch.backends.cudnn.benchmark
    result = lrfind.find_lr(spec, distributed.DistEnv(device=torch.device("cpu")), steps=12, min_lr=1e-5, max_lr=1.0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.backends.cudnn.benchmark == bench
    assert len(result.lrs) == 12 or result.stopped.startswith("diverged")
    assert result.rule.startswith("lr at the smoothed loss's minimum / 10")  # 12 points: too few for steepest
    assert not (tmp_path / "runs").exists()


def test_lr_find_refuses_to_replace_a_folder_without_overwrite_or_that_is_not_its_report(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, batch_size=8, steps=2)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = cli_run("lr-find", spec, "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = cli_run("lr-find", spec, "--out", out, "--overwrite")
    assert r.returncode == 2 and "notes.txt" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    r = cli_run("lr-find", spec, "--steps", 1)
    assert r.returncode == 2 and "--steps" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_batch_size_probe_on_cpu_reports_peak_rss_and_says_it_is_not_a_device_limit(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, batch_size=8, steps=2)
    out = tmp_path / "bs"
    r = cli_run("lr-find", spec, "--batch-size", "--max-batch-size", 8, "--out", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "batch-size.json").read_text())
    assert [row["batch_size"] for row in report["rows"]] == [2, 4, 8]
    assert all(row["fits"] and row["peak_bytes"] > 0 for row in report["rows"])
    assert "resident set size" in report["measured"] and report["largest_fitting"] is None
    assert "no device-memory limit" in r.stdout and "peak memory" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bs", "tiny.toml"]
