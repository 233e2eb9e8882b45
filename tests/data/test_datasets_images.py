"""The datasets' image decoder and split helpers: decoding real files written here, the faults it reports."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from plugtrain.core.data import SampleError
from plugtrain.core.files import is_image_file, iter_image_files
from plugtrain.plugins.datasets.decode import decode_image
from plugtrain.plugins.datasets.splits import ArraySplit, ImageFileSplit, PathTable, split_indices

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("decoder", ["pil", "cv2"])
def test_png_round_trips_exactly_as_rgb(tmp_path, decoder):
    array = _rgb()
    path = _png(tmp_path / "a.png", array)
    out = decode_image(path, 3, decoder)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("decoder", ["pil", "cv2"])
def test_grayscale_in_rgb_set_is_converted_and_rgb_to_gray_is_luma(tmp_path, decoder):
    gray = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    path = _png(tmp_path / "g.png", gray)
    rgb = decode_image(path, 3, decoder)
    assert rgb.shape == (7, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)
    colour = _rgb(6, 5)
    one = decode_image(_png(tmp_path / "c.png", colour), 1, decoder)
    assert one.shape == (6, 5, 1)
    luma = colour.astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(one[..., 0].astype(float) - luma).max() <= 1.0


def test_jpeg_bmp_webp_tiff_rgba_palette_and_16bit(tmp_path):
    array = np.full((8, 8, 3), (200, 40, 90), dtype=np.uint8)
    for ext in ("jpg", "bmp", "webp", "tif"):
        path = tmp_path / f"x.{ext}"
        Image.fromarray(array).save(path)
        out = decode_image(path, 3)
        assert out.shape == (8, 8, 3)
        assert np.abs(out.astype(int) - array).max() <= 8, ext  # lossy formats within a few levels
    rgba = np.dstack([array, np.zeros((8, 8), np.uint8)])
    np.testing.assert_array_equal(decode_image(_png(tmp_path / "a.png", rgba), 3), array)  # alpha dropped
    Image.fromarray(array).convert("P").save(tmp_path / "p.png")
    assert decode_image(tmp_path / "p.png", 3).shape == (8, 8, 3)
    sixteen = np.full((4, 4), 0xAB12, dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").mode.startswith("I")
    out = decode_image(tmp_path / "s.png", 3)
    assert out.shape == (4, 4, 3) and (out == 0xAB).all()  # the high byte


@pytest.mark.parametrize("decoder", ["pil", "cv2"])
def test_faults_raise_sample_error_with_path_and_reason(tmp_path, decoder):
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(300))
    good = tmp_path / "good.png"
    _png(good, _rgb(64, 64))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    cases = {
        zero: "empty file (0 bytes)",
        garbage: "not a readable image",
        tmp_path / "missing.png": "file not found",
        tmp_path: "is a directory",
    }
    if decoder == "pil":  # OpenCV decodes truncated files partially; Pillow refuses them
        cases[truncated] = "truncated"
    for path, reason in cases.items():
        with pytest.raises(SampleError) as info:
            decode_image(path, 3, decoder)
        assert info.value.path == str(path)
        assert reason in info.value.reason, (path, info.value.reason)
        assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = _png(tmp_path / "locked.png", _rgb())
    os.chmod(path, 0)
    with pytest.raises(SampleError, match="permission denied"):
        decode_image(path)


def test_bad_arguments_are_value_errors(tmp_path):
    path = _png(tmp_path / "a.png", _rgb())
    with pytest.raises(ValueError):
        decode_image(path, 2)
    with pytest.raises(ValueError):
        decode_image(path, 3, "magick")


def test_listing_files(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", ".hidden.png", "._a.jpg", "notes.txt", "sub/c.jpeg", "sub/deeper/d.webp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "e.png").write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in iter_image_files(str(tmp_path))]
    assert found == ["a.jpg", "b.PNG", "sub/c.jpeg", "sub/deeper/d.webp"]
    assert is_image_file("X.TIFF") and not is_image_file("x.gif") and not is_image_file("._x.png")


def test_path_table_keeps_strings_including_undecodable_names():
    names = ["a/b.png", "ünïcode/ß.jpg", "", "bad\udcff.png"]
    table = PathTable(names)
    assert len(table) == 4 and list(table) == names
    assert list(pickle.loads(pickle.dumps(table))) == names
    assert list(table.take([3, 0])) == ["bad\udcff.png", "a/b.png"]


def test_image_file_split_streams_from_disk(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", np.full((4, 4, 3), i, np.uint8)) for i in range(3)]
    split = ImageFileSplit(paths, [0, 1, 1])
    assert len(split) == 3 and split.targets == [0, 1, 1] and split.skipped == 0
    image, target = split[-1]
    assert target == 1 and isinstance(target, int) and (image == 2).all()
    _png(paths[2], np.full((4, 4, 3), 77, np.uint8))  # changed on disk after indexing: read anew
    assert (split[2][0] == 77).all()
    with pytest.raises(IndexError):
        split[3]
    sub = split.subset([2, 0])
    assert sub.targets == [1, 0] and sub.path(0) == paths[2]
    assert [t for _, t in pickle.loads(pickle.dumps(split))] == [0, 1, 1]

    reg = ImageFileSplit(paths, [[0.5], [1.5], [2.5]], task="regression")
    assert reg[1][1] == 1.5 and isinstance(reg[1][1], float) and reg.targets == [0.5, 1.5, 2.5]
    vec = ImageFileSplit(paths, [[0, 1], [2, 3], [4, 5]], task="regression")
    assert vec[2][1].dtype == np.float32 and vec[2][1].tolist() == [4.0, 5.0]


def test_array_split_copies_and_converts_channels():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    split = ArraySplit(images, [4, 5], [1], channels=3)
    image, target = split[0]
    assert image.shape == (3, 3, 3) and target == 5 and split.targets == [5]
    image[:] = 0
    assert images[1].max() > 0  # a copy, not a view


def test_split_indices_stratified_and_seeded():
    targets = np.repeat(np.arange(4), [10, 20, 5, 1])
    tr, va = split_indices(targets, 0.2, seed=3)
    assert len(va) == round(36 * 0.2) and len(tr) + len(va) == 36
    assert not set(tr) & set(va)
    assert list(np.bincount(targets[va], minlength=4)[:3]) == [2, 4, 1]  # proportional shares
    assert 3 in set(targets[tr])  # the class with one sample keeps it for training
    again = split_indices(targets, 0.2, seed=3)
    assert (again[1] == va).all()
    assert any((split_indices(targets, 0.2, seed=s)[1] != va).any() for s in range(4, 8))
    tr, va = split_indices(np.zeros(10), 0.3, seed=0, stratify=False)
    assert len(va) == 3 and sorted([*tr, *va]) == list(range(10))


def test_default_png_decode_equals_pillow_exactly_and_stays_strict(tmp_path):
    """The default decoder reads complete 8-bit PNGs with OpenCV (faster): every kind of PNG must come out as Pillow's
    own ``convert("RGB")`` does, and a truncated or corrupt PNG must still be refused."""
    rgba = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    images = {
        "rgb.png": Image.fromarray(_rgb(13, 17)),
        "gray.png": Image.fromarray(RNG.integers(0, 256, (10, 6), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rgba, mode="RGBA"),
        "palette.png": Image.fromarray(_rgb(8, 8)).convert("P", palette=Image.ADAPTIVE, colors=16),
        "gray16.png": Image.fromarray(RNG.integers(0, 65536, (5, 7), dtype=np.uint16)),
        "bilevel.png": Image.fromarray(RNG.integers(0, 2, (6, 6), dtype=np.uint8) * 255).convert("1"),
    }
    for name, image in images.items():
        path = tmp_path / name
        image.save(path)
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB")) if im.mode not in ("I;16", "I;16B", "I") else None
        got = decode_image(str(path), 3)
        assert got.shape[2] == 3 and got.dtype == np.uint8 and got.flags.c_contiguous, name
        if expected is not None:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        else:  # 16-bit grey: the high byte, replicated
            with Image.open(path) as im:
                high = (np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)
            np.testing.assert_array_equal(got, np.repeat(high[..., None], 3, axis=2), err_msg=name)

    data = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) - 30])
    broken = bytearray(data)
    broken[60] ^= 0xFF  # inside the image data: the chunk's CRC no longer matches
    (tmp_path / "corrupt.png").write_bytes(bytes(broken))
    for name in ("truncated.png", "corrupt.png"):
        with pytest.raises(SampleError) as info:
            decode_image(str(tmp_path / name), 3)
        assert info.value.path == str(tmp_path / name) and info.value.reason, name
