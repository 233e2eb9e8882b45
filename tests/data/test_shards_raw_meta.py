"""``plugtrain shards`` of raw-pixel files (issue 24) records how they decode (``pixels``, ``npy_layout``, the channels
kept) in ``plugtrain-shards.json``, and ``webdataset`` reads the shards back with no parameter but the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli
from helpers_sciimages import FASHION, spec_over, write_fashion_folders

from plugtrain.core.registry import get_registry

pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run)")


def test_shards_of_npy_stacks_read_back_as_the_source_without_parameters(tmp_path):
    root = write_fashion_folders(tmp_path / "data", per_class=2, val_per_class=1)["npy4"]  # CHW float32, 4 channels
    source = {"dataset": "imagefolder", "root": str(root), "pixels": "raw", "npy_layout": "CHW", "channels": [0, 3]}
    spec = spec_over(tmp_path / "npy.toml", tmp_path / "runs", source, 2)
    shards = tmp_path / "shards"
    assert cli("shards", spec, "--out", shards) == 0
    meta = json.loads((shards / "plugtrain-shards.json").read_text())
    assert (meta["pixels"], meta["npy_layout"], meta["channels"]) == ("raw", "CHW", [0, 3])
    reg = get_registry()
    wds = reg.get("datasets", "webdataset").build({"shards": str(shards)}, seed=0, on_error="raise")
    folder = reg.get("datasets", "imagefolder").build({k: v for k, v in source.items() if k != "dataset"}, seed=0,
                                                       on_error="raise")
    got = sorted((wds.val[i][0] for i in range(len(wds.val))), key=lambda a: a.tobytes())
    want = sorted((folder.val[i][0] for i in range(len(folder.val))), key=lambda a: a.tobytes())
    assert len(got) == len(want) > 0
    assert all(a.dtype == np.float32 and a.shape[2] == 2 and np.array_equal(a, b) for a, b in zip(got, want, strict=True))
