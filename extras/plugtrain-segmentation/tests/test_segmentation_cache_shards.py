"""segmentation-pairs with the decoded-sample cache (images AND masks) and read back from ``plugtrain shards``.

Data: a few 56x56 canvases of REAL Fashion-MNIST items (``seg_fmnist_data``), masks as palette PNGs. Nothing is
mocked: the real cache files (in a temporary ``cache_dir`` or ``/dev/shm``) and the real ``plugtrain shards`` CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core suite's helpers, run alone too
import seg_fmnist_data  # noqa: E402
from helpers_cli import in_process  # noqa: E402

pytestmark = pytest.mark.skipif(not seg_fmnist_data.available(), reason="Debian's dataset-fashion-mnist is missing")

SPEC = """\
[run]
name = "shards-src"
output_dir = "{out}"
seed = 0
epochs = 1
task = "segmentation"

[data]
dataset = "segmentation-pairs"
{data_lines}
channels = 1
image_size = 32
batch_size = 4

[backbone]
name = "smp-Unet"
encoder_name = "tu-test_resnet"
encoder_depth = 3
in_chans = 1

[loss]
name = "DiceCE"

[optimizer]
name = "AdamW"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("seg-small")
    return root, seg_fmnist_data.write(root, n_train=10, n_val=4)


@pytest.fixture
def cli(capfd, monkeypatch):
    return in_process(capfd, monkeypatch)


def _samples(split) -> list[tuple[np.ndarray, np.ndarray]]:
    return [split[i] for i in range(len(split))]


def _same(a, b) -> bool:
    return all(x.dtype == u.dtype and y.dtype == v.dtype and np.array_equal(x, u) and np.array_equal(y, v)
               for (x, y), (u, v) in zip(a, b, strict=True))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_the_cache_keeps_images_and_masks_and_serves_what_a_fresh_decode_gives(data, tmp_path, mode):
    from plugtrain_segmentation.dataset import segmentation_pairs

    root, names = data
    kw = dict(val=str(root / "val"), channels=1, cache=mode, cache_dir=str(tmp_path / "cache"))
    plain = segmentation_pairs(str(root / "train"), names, val=str(root / "val"), channels=1)
    cached = segmentation_pairs(str(root / "train"), names, **kw)
    assert cached.train.image_cache is not None and cached.train.mask_cache is not None
    assert cached.val.mask_cache is not None and cached.train.mask_cache.filled() == 0
    first = _samples(cached.train)  # fills both caches
    assert cached.train.image_cache.filled() == cached.train.mask_cache.filled() == len(plain.train) == 10
    again = segmentation_pairs(str(root / "train"), names, **kw)  # another process's view: reads the filled files
    assert again.train.mask_cache.filled() == 10
    expected = _samples(plain.train)
    assert _same(first, expected) and _same(_samples(again.train), expected)
    assert _same(_samples(again.val), _samples(plain.val))
    if mode == "disk":
        assert sorted(p.name.split("-")[2] for p in (tmp_path / "cache" / "decoded").glob("*.data")) == [
            "train", "train", "val", "val"]


def test_a_cached_split_never_serves_a_mask_that_a_fresh_decode_refuses(tmp_path):
    from PIL import Image
    from plugtrain_segmentation.dataset import segmentation_pairs

    from plugtrain.core.data import SampleError

    split = tmp_path / "s"
    (split / "images").mkdir(parents=True)
    (split / "masks").mkdir()
    for name, value in (("a", 1), ("b", 7)):  # 7 is no class of three
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(split / "images" / f"{name}.png")
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(split / "masks" / f"{name}.png")
    classes = ["background", "x", "y"]
    kw = dict(val=str(split), channels=1, cache="disk", cache_dir=str(tmp_path / "cache"))
    ds = segmentation_pairs(str(split), classes, **kw)
    assert ds.train[0][1].max() == 1
    for _ in range(2):
        with pytest.raises(SampleError, match="mask value 7 is not a class index"):
            ds.train[1]
    assert ds.train.image_cache.filled() == ds.train.mask_cache.filled() == 1  # only the whole sample
    wider = segmentation_pairs(str(split), [*classes, "c3", "c4", "c5", "c6", "c7"], **kw)  # 7 is a class now
    assert wider.train.mask_cache.filled() == 0 and wider.train[1][1].max() == 7  # another key: no stale masks


def test_shards_of_a_segmentation_spec_read_back_the_folder_samples(data, tmp_path, cli):
    from plugtrain_segmentation.dataset import segmentation_pairs

    root, names = data
    lines = f'train = "{root}/train"\nval = "{root}/val"\nclass_names = {json.dumps(names)}'
    spec = tmp_path / "src.toml"
    spec.write_text(SPEC.format(out=tmp_path / "runs", data_lines=lines), encoding="utf-8")
    proc = cli("shards", spec, "--out", tmp_path / "shards", "--shard-size", 4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = segmentation_pairs(str(root / "train"), names, val=str(root / "val"), channels=1)
    shards = segmentation_pairs(shards=str(tmp_path / "shards"), channels=1)  # class names from the shards
    assert shards.class_names == names and len(shards.train) == 10 and len(shards.val) == 4
    assert _same(_samples(shards.train), _samples(folder.train))
    assert _same(_samples(shards.val), _samples(folder.val))
    cached = segmentation_pairs(shards=str(tmp_path / "shards"), channels=1, cache="disk",
                                cache_dir=str(tmp_path / "cache"))
    assert _same(_samples(cached.train), _samples(folder.train)) and cached.train.mask_cache.filled() == 10
    assert _same(_samples(cached.train), _samples(folder.train))  # now from the cache

    on_shards = tmp_path / "on-shards.toml"
    on_shards.write_text(SPEC.format(out=tmp_path / "runs", data_lines=f'shards = "{tmp_path / "shards"}"'),
                         encoding="utf-8")
    proc = cli("check", on_shards)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    from plugtrain.core.errors import PlugtrainError

    with pytest.raises(PlugtrainError, match="differ from the classes"):
        segmentation_pairs(shards=str(tmp_path / "shards"), class_names=["bg", "x"], channels=1)
    with pytest.raises(PlugtrainError, match="either shards or train"):
        segmentation_pairs(str(root / "train"), names, shards=str(tmp_path / "shards"))
    with pytest.raises(PlugtrainError, match="no plugtrain-shards.json"):
        segmentation_pairs(shards=str(root), channels=1)
