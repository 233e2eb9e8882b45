"""WebDataset shards under DDP (issue 17 item 2): a 2-process torchrun over an odd number of shards of unequal size
completes every epoch with the same number of batches on each rank, validation counts each sample once, and both
ranks fill one shared decoded-sample cache.

Real ``torchrun`` (gloo on CPU) of ``plugtrain train``; the validation figures are checked against ``plugtrain
evaluate`` of the same checkpoint in one process, which reads each validation sample exactly once.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import cli, run_cli, run_torchrun
from helpers_data import folder_spec, write_folder

from plugtrain.core.registry import get_registry

pytestmark = pytest.mark.slow


def test_two_ranks_over_seven_unequal_shards_take_equal_batches_and_validate_each_sample_once(tmp_path, capsys):
    root = write_folder(tmp_path / "images", per_class=15)  # 45 images
    shards = tmp_path / "shards"
    assert cli("shards", root, "--out", shards, "--shard-size", 5, "--val-fraction", 0.29) == 0
    meta = json.loads((shards / "plugtrain-shards.json").read_text())
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["samples_per_shard"] == [5, 5, 5, 5, 5, 5, 2] and val["samples_per_shard"] == [5, 5, 3]
    capsys.readouterr()

    data = {"dataset": "webdataset", "shards": str(shards / train["pattern"]),
            "val_shards": str(shards / val["pattern"]), "batch_size": 6, "drop_last": False,
            "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    # test_nfnet: no batch norm, so no per-rank running statistics: a rank's validation is the model's
    spec = folder_spec(tmp_path / "ddp.toml", tmp_path / "runs", data, run={"name": "ddp", "epochs": 2},
                       trainer={"max_steps_per_epoch": None}, backbone={"name": "test_nfnet"})
    proc = run_torchrun(2, "train", spec, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    # 32 samples, global batch 2 x 6 = 12, the last one padded and split evenly: 3 batches per rank per epoch
    assert last["epoch"] == 2 and last["global_step"] == 2 * 3
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]

    evaluated = run_cli("evaluate", run_dir, "--checkpoint", "last", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    record = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert record["samples"] == 13  # 7 on rank 0, 6 on rank 1
    one_process = record["metrics"]
    assert float(rows[-1]["val/loss"]) == pytest.approx(one_process["val/loss"], rel=1e-6)
    assert float(rows[-1]["val/accuracy"]) == pytest.approx(one_process["val/accuracy"], abs=1e-6)

    # both ranks' workers filled the one cache file of each split (one copy per machine)
    files = sorted(p.name.split("-")[1] for p in (tmp_path / "cache" / "decoded").glob("*.data"))
    assert files == ["train", "val"]
    again = get_registry().get("datasets", "webdataset").build(
        {k: v for k, v in data.items() if k not in ("batch_size", "drop_last", "dataset")}, seed=0,
        on_error="raise", image_size=None)
    assert again.train.cache.filled() == len(again.train) == 32
    assert again.val.cache.filled() == len(again.val) == 13
