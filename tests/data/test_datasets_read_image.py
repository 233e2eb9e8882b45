"""Each built-in dataset's ``read_image``: a file read for ``plugtrain predict`` comes out exactly as that dataset's
own samples do before the augmentation pipeline; a bad path is one PlugtrainError line naming it."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry

RNG = np.random.default_rng(3)


def _dataset(name: str):
    return get_registry().get("datasets", name)


def _read(name: str, path, in_chans: int, params: dict | None = None) -> np.ndarray:
    return _dataset(name).factory.read_image(path, in_chans=in_chans, params=params or {})


def test_every_built_in_dataset_has_read_image():
    for name in ("imagefolder", "csv", "idx", "sklearn-digits"):
        assert callable(getattr(_dataset(name).factory, "read_image", None)), name


@pytest.mark.parametrize("params", [{}, {"channels": 1}, {"decoder": "cv2"}, {"channels": 1, "decoder": "cv2"}])
def test_imagefolder_files_read_as_its_samples(tmp_path, params):
    for c, cls in enumerate(("a", "b")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            array = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
            image = Image.fromarray(array).convert("L") if (i + c) % 2 else Image.fromarray(array)
            image.save(tmp_path / cls / f"{i}.{'png' if i else 'jpg'}")
    ds = _dataset("imagefolder").build({"root": str(tmp_path), "val_fraction": 0.5, **params}, seed=0,
                                       on_error="raise")
    for split in (ds.train, ds.val):
        for i in range(len(split)):
            got = _read("imagefolder", split.path(i), ds.in_chans, params)
            np.testing.assert_array_equal(got, split[i][0])


def test_csv_files_read_as_its_samples(tmp_path):
    rows = ["path,label"]
    for i in range(6):
        Image.fromarray(RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    params = {"csv": str(tmp_path / "m.csv"), "channels": 1}
    ds = _dataset("csv").build(params, seed=0, on_error="raise")
    for i in range(len(ds.train)):
        np.testing.assert_array_equal(_read("csv", ds.train.path(i), 1, params), ds.train[i][0])


@pytest.mark.parametrize("upscale", [4, 2, 1])
def test_a_saved_digit_comes_back_as_the_sample_and_an_8x8_one_is_upscaled_like_it(tmp_path, upscale):
    params = {"upscale": upscale} if upscale != 4 else {}
    ds = _dataset("sklearn-digits").build(params, seed=0)
    for i in (0, 5, 17):
        sample = ds.val[i][0]
        assert sample.shape == (8 * upscale, 8 * upscale, 1)
        Image.fromarray(sample[..., 0]).save(tmp_path / "saved.png")
        np.testing.assert_array_equal(_read("sklearn-digits", tmp_path / "saved.png", 1, params), sample)
        small = sample[::upscale, ::upscale, 0]
        Image.fromarray(np.stack([small] * 3, axis=-1)).save(tmp_path / "small.png")  # colour file, 8x8
        np.testing.assert_array_equal(_read("sklearn-digits", tmp_path / "small.png", 1, params), sample)


def _write_idx(path, array: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("channels", [1, 3])
def test_idx_samples_saved_as_files_read_back_as_the_samples(tmp_path, channels):
    images = RNG.integers(0, 256, (20, 6, 5), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 2)
    params = {"root": str(tmp_path), "channels": channels}
    ds = _dataset("idx").build(params, seed=0, on_error="raise")
    for i in range(3):
        sample = ds.train[i][0]
        Image.fromarray(sample[..., 0] if channels == 1 else sample).save(tmp_path / "s.png")
        np.testing.assert_array_equal(_read("idx", tmp_path / "s.png", channels, params), sample)


def test_idx_reduces_a_colour_file_as_it_reduces_colour_samples(tmp_path):
    from plugtrain.plugins.datasets.splits import ArraySplit

    colour = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.png")
    expected = ArraySplit(colour[None], [0], channels=1)[0][0]
    np.testing.assert_array_equal(_read("idx", tmp_path / "c.png", 1), expected)


@pytest.mark.parametrize("name", ["imagefolder", "csv", "idx", "sklearn-digits"])
def test_bad_paths_are_one_line_naming_the_path(tmp_path, name):
    (tmp_path / "notes.png").write_text("not an image")
    for path, reason in ((tmp_path / "missing.png", "file not found"), (tmp_path, "is a directory"),
                         (tmp_path / "notes.png", "not a readable image")):
        with pytest.raises(PlugtrainError) as info:
            _read(name, path, 1)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and reason in msg and "\n" not in msg
