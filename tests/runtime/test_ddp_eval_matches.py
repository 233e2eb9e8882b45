"""What a DDP run logs as its validation is what its checkpoints score: ``plugtrain evaluate`` of ``best.pt`` (and of
``last.pt``, its EMA and its SWA weights) in one process reproduces the metrics the 2-process run logged for that
epoch, each validation sample counted once.

Each rank's last training forward updates its own batch-norm running statistics from its own batch, and the
checkpoints hold rank 0's: before the fix each rank validated its share of the samples with its own statistics, so
the logged numbers belonged to no saved model (val/top5 0.512 logged, 0.498 by evaluate)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import run_torchrun, tiny_spec

#: 201 validation samples (sklearn-digits, 11.2 % held out): odd, so not divisible by 2 processes x 8 per batch.
VAL_FRACTION = 0.112
VAL_SAMPLES = 201
AVERAGES = """
ema = true
ema_decay = 0.9
swa = true
swa_start_epoch = 1
"""


@pytest.mark.slow
def test_a_ddp_runs_logged_validation_is_what_evaluate_gives_for_its_checkpoints(tmp_path, cli_run, one_torch_thread):
    # test_efficientnet has batch-norm layers; EMA and SWA averages are validated too (val_ema/*, val_swa/*)
    spec = tiny_spec(tmp_path, "ddp", tmp_path / "runs", batch_size=8, epochs=2, steps=3, extra=AVERAGES)
    text = spec.read_text().replace('dataset = "sklearn-digits"\n',
                                    f'dataset = "sklearn-digits"\nval_fraction = {VAL_FRACTION}\n')
    spec.write_text(text)
    proc = run_torchrun(2, "train", spec, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"/ {VAL_SAMPLES} val samples" in proc.stdout and VAL_SAMPLES % (2 * 8)
    run = tmp_path / "runs" / "ddp"
    with (run / "metrics.csv").open(newline="") as f:
        logged = {int(r["epoch"]): r for r in csv.DictReader(f)}
    assert sorted(logged) == [1, 2]

    def evaluate(*args: str) -> dict:
        res = cli_run("evaluate", run, *args, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        record = json.loads((run / "eval-val.json").read_text())
        assert record["samples"] == VAL_SAMPLES and record["skipped"] == 0
        return record

    cases = [((), "val"), (("--checkpoint", "last"), "val"), (("--checkpoint", "last", "--weights", "ema"), "val_ema"),
             (("--weights", "swa"), "val_swa")]
    for args, prefix in cases:
        record = evaluate(*args)
        row = logged[record["epoch"]]
        names = [k.removeprefix("val/") for k in record["metrics"]]
        assert {"loss", "accuracy", "top5"} <= set(names)
        for name in names:
            got, want = record["metrics"][f"val/{name}"], float(row[f"{prefix}/{name}"])
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (args, name, got, want)
