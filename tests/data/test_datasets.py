"""The built-in datasets, built through the registry on small real files written here, and their data faults."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugtrain.core.data import DatasetSplits, SampleError
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry


def build(name: str, params: dict, on_error: str = "raise", seed: int = 0) -> DatasetSplits:
    return get_registry().get("datasets", name).build(params, seed=seed, on_error=on_error, image_size=None)


def write_image(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (6, 5)) -> Path:
    """A small solid image whose pixel value identifies it; ``size`` is (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, value, value)
    Image.new(mode, size, colour).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], ext: str = "png") -> dict[Path, int]:
    """``root/<class>/<i>.<ext>`` images; returns each file's pixel value (unique per file)."""
    values = {}
    n = 0
    for cls, count in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            n += 1
            values[write_image(root / cls / f"{i}.{ext}", n)] = n
    return values


def check_samples(split, class_names: list[str], channels: int = 3) -> None:
    """Every sample is an HxWxC uint8 image whose target agrees with ``targets`` and with its class folder."""
    targets = split.targets
    assert len(targets) == len(split)
    for i in range(len(split)):
        image, target = split[i]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == channels
        assert isinstance(target, int) and target == targets[i]
        assert Path(split.path(i)).parent.name == class_names[target]


# ---------------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_flat_split_is_stratified_seeded_and_streamed(tmp_path):
    values = make_folder(tmp_path / "data", {"dog": 10, "cat": 5, "bird": 5})
    (tmp_path / "data" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "cat" / ".hidden.png").write_bytes(b"junk")
    ds = build("imagefolder", {"root": str(tmp_path / "data"), "val_fraction": 0.2}, seed=1)
    assert ds.class_names == ["bird", "cat", "dog"] and ds.in_chans == 3 and ds.task == "classification"
    assert len(ds.train) == 16 and len(ds.val) == 4 and ds.test is None
    assert sorted(ds.val.targets) == [0, 1, 2, 2]  # stratified: 20% of each class
    assert set(ds.train.paths).isdisjoint(ds.val.paths)
    for split in (ds.train, ds.val):
        check_samples(split, ds.class_names)
        assert split.skipped == 0 and split.problems == []
    image, _ = ds.val[0]
    assert image.shape == (5, 6, 3) and (image == values[Path(ds.val.path(0))]).all()

    same = build("imagefolder", {"root": str(tmp_path / "data")}, seed=1)
    assert same.val.paths == ds.val.paths
    assert any(
        build("imagefolder", {"root": str(tmp_path / "data")}, seed=s).val.paths != ds.val.paths for s in (2, 3, 4)
    )

    # Streamed: the split holds paths, not pixels; a file rewritten after indexing is read anew.
    assert len(pickle.dumps(ds.train)) < 4000
    write_image(Path(ds.train.path(0)), 250)
    assert (ds.train[0][0] == 250).all()


def test_imagefolder_train_val_test_folders_and_channels(tmp_path):
    make_folder(tmp_path / "train", {"a": 3, "b": 2})
    make_folder(tmp_path / "val", {"a": 1, "b": 1}, ext="jpg")
    make_folder(tmp_path / "test", {"a": 1, "c": 1})
    ds = build("imagefolder", {"root": str(tmp_path), "channels": 1})
    assert ds.class_names == ["a", "b", "c"] and ds.in_chans == 1
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 2, 2)
    assert ds.test.targets == [0, 2] and ds.val.targets == [0, 1]
    for split in (ds.train, ds.val, ds.test):
        check_samples(split, ds.class_names, channels=1)
    assert any("class 'c' has no train folder" in what for _, what in ds.train.problems)

    # train/ alone: val_fraction of it becomes val.
    only = tmp_path / "only"
    make_folder(only / "train", {"a": 5, "b": 5})
    ds = build("imagefolder", {"root": str(only), "val_fraction": 0.4})
    assert (len(ds.train), len(ds.val)) == (6, 4) and sorted(ds.val.targets) == [0, 0, 1, 1]


def test_imagefolder_structure_errors_at_build(tmp_path):
    with pytest.raises(PlugtrainError, match="dataset root '.*nowhere' does not exist"):
        build("imagefolder", {"root": str(tmp_path / "nowhere")})
    write_image(tmp_path / "flat" / "x.png", 1)
    with pytest.raises(PlugtrainError, match="no class sub-folders.*one sub-folder per class"):
        build("imagefolder", {"root": str(tmp_path / "flat")})
    make_folder(tmp_path / "ok", {"a": 2})
    for bad in (0, 1, 1.5, "x"):
        with pytest.raises(PlugtrainError, match="val_fraction"):
            build("imagefolder", {"root": str(tmp_path / "ok"), "val_fraction": bad})
    with pytest.raises(PlugtrainError, match="channels must be 1 or 3"):
        build("imagefolder", {"root": str(tmp_path / "ok"), "channels": 4})
    make_folder(tmp_path / "tv" / "train", {"a": 2})
    with pytest.raises(PlugtrainError, match="train/ but no val/"):
        build("imagefolder", {"root": str(tmp_path / "tv"), "val_fraction": 0})


def test_imagefolder_empty_class_folder_raise_or_keep(tmp_path):
    make_folder(tmp_path, {"a": 4, "c": 4})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(PlugtrainError) as info:
        build("imagefolder", {"root": str(tmp_path)})
    assert f"class folder '{tmp_path / 'b'}' holds no images" in str(info.value)
    assert 'on_error = "skip"' in str(info.value)

    ds = build("imagefolder", {"root": str(tmp_path)}, on_error="skip")
    assert ds.class_names == ["a", "b", "c"]  # kept: labels stay those of the folder names
    assert 1 not in ds.train.targets + ds.val.targets
    assert set(ds.train.targets) == {0, 2}
    assert ds.train.problems == [(str(tmp_path / "b"), "class folder holds no images: class kept with no samples")]
    assert ds.train.skipped == 0  # no sample was dropped


def test_imagefolder_sample_faults_at_getitem_and_grayscale_converted(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "gray.png", 77, mode="L")
    (tmp_path / "b" / "zero.png").write_bytes(b"")
    (tmp_path / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    good = (tmp_path / "noise.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(good[: len(good) // 2])  # a valid header, half the pixels
    ds = build("imagefolder", {"root": str(tmp_path), "val_fraction": 0.5})  # indexing does not decode
    everything = {}
    for split in (ds.train, ds.val):
        for i in range(len(split)):
            everything[os.path.relpath(split.path(i), tmp_path)] = (split, i)
    assert len(everything) == 8

    split, i = everything["a/gray.png"]
    image, target = split[i]
    assert image.shape == (5, 6, 3) and (image == 77).all() and target == 0  # converted, not an error
    expected = {"zero.png": "empty file (0 bytes)", "corrupt.jpg": "corrupt", "truncated.png": "truncated"}
    for name, reason in expected.items():
        split, i = everything[f"b/{name}"]
        with pytest.raises(SampleError) as info:
            split[i]
        assert info.value.path == str(tmp_path / "b" / name)
        assert reason in info.value.reason, (name, info.value.reason)
    # A file removed after indexing is a sample fault too.
    split, i = everything["a/1.png"]
    os.remove(split.path(i))
    with pytest.raises(SampleError, match="file not found"):
        split[i]


# ---------------------------------------------------------------------------------------------------- csv


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_csv_classification_names_and_relative_paths(tmp_path):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", 10 * i)
    labels = ["zebra", "ant", "zebra", "ant", "moth", "moth"]
    manifest = write_csv(tmp_path / "train.csv", "path,label", [f"img/{i}.png,{c}" for i, c in enumerate(labels)])
    val = write_csv(tmp_path / "sub" / "val.csv", "label,path", ["ant,../img/1.png", "zebra,../img/0.png"])
    ds = build("csv", {"csv": str(manifest), "val_csv": str(val)})
    assert ds.class_names == ["ant", "moth", "zebra"] and ds.task == "classification"
    assert ds.train.targets == [2, 0, 2, 0, 1, 1] and ds.val.targets == [0, 2]
    image, target = ds.train[4]
    assert image.shape == (5, 6, 3) and (image == 40).all() and target == 1

    ds = build("csv", {"csv": str(manifest), "val_fraction": 0.5}, seed=5)
    assert (len(ds.train), len(ds.val)) == (3, 3) and sorted(ds.val.targets) == [0, 1, 2]


def test_csv_integer_labels_num_classes_and_out_of_range(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"{i}.png", i)
    rows = ["0.png,0", "1.png,1", "2.png,3", "3.png,1"]
    manifest = write_csv(tmp_path / "m.csv", "path,label", rows)
    ds = build("csv", {"csv": str(manifest), "val_csv": str(manifest)})
    assert ds.class_names == ["0", "1", "2", "3"] and ds.train.targets == [0, 1, 3, 1]
    ds = build("csv", {"csv": str(manifest), "val_csv": str(manifest), "num_classes": 5})
    assert ds.num_classes == 5

    with pytest.raises(PlugtrainError) as info:
        build("csv", {"csv": str(manifest), "val_csv": str(manifest), "num_classes": 3})
    assert str(info.value) == f"{manifest}:4: {tmp_path / '2.png'}: label 3 out of range: 3 classes (0..2)"
    ds = build("csv", {"csv": str(manifest), "val_csv": str(manifest), "num_classes": 3}, on_error="skip")
    assert ds.train.targets == [0, 1, 1] and ds.train.skipped == 1 and ds.val.skipped == 1
    assert ds.train.problems == [(f"{manifest}:4", f"{tmp_path / '2.png'}: label 3 out of range: 3 classes (0..2)")]

    named = write_csv(tmp_path / "n.csv", "path,label", ["0.png,cat", "1.png,dgo"])
    with pytest.raises(PlugtrainError, match=r"n.csv:3: .*unknown class name 'dgo'. Did you mean 'dog'\?"):
        build("csv", {"csv": str(named), "val_csv": str(named), "class_names": ["cat", "dog"]})


def test_csv_missing_file_raise_names_line_and_path_skip_counts(tmp_path):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", i)
    rows = [f"{i}.png,{i % 2}" for i in range(6)] + ["gone.png,0", "also-gone.png,1"]
    manifest = write_csv(tmp_path / "m.csv", "path,label", rows)
    with pytest.raises(PlugtrainError) as info:
        build("csv", {"csv": str(manifest)})
    assert str(info.value) == f"{manifest}:8: {tmp_path / 'gone.png'}: file not found (and 1 more bad rows)"

    ds = build("csv", {"csv": str(manifest), "val_fraction": 0.5}, on_error="skip")
    assert len(ds.train) + len(ds.val) == 6
    assert ds.train.skipped == 2 and ds.val.skipped == 0  # rows of the main manifest count in train
    assert [w for w, _ in ds.train.problems] == [f"{manifest}:8", f"{manifest}:9"]

    # Not checked at build time: the missing file is a SampleError when read.
    ds = build("csv", {"csv": str(manifest), "val_csv": str(manifest), "check_files": False})
    assert len(ds.train) == 8
    with pytest.raises(SampleError) as info:
        ds.train[6]
    assert info.value.path == str(tmp_path / "gone.png") and info.value.reason == "file not found"


def test_csv_regression_single_and_several_targets(tmp_path):
    for i in range(5):
        write_image(tmp_path / "im" / f"{i}.jpg", 40 * i)
    single = write_csv(tmp_path / "r.csv", "path,target", [f"im/{i}.jpg,{i * 0.5}" for i in range(5)])
    ds = build("csv", {"csv": str(single), "val_fraction": 0.4})
    assert ds.task == "regression" and ds.class_names == ["target"] and ds.num_classes == 1
    assert (len(ds.train), len(ds.val)) == (3, 2)
    image, target = ds.train[0]
    assert isinstance(target, float) and target in (0.0, 0.5, 1.0, 1.5, 2.0) and image.shape == (5, 6, 3)
    assert sorted(ds.train.targets + ds.val.targets) == [0.0, 0.5, 1.0, 1.5, 2.0]

    several = write_csv(tmp_path / "xy.csv", "path,x,y,note", [f"im/{i}.jpg,{i},{-i},n" for i in range(5)])
    ds = build("csv", {"csv": str(several), "val_csv": str(several), "target_columns": ["x", "y"], "channels": 1})
    assert ds.class_names == ["x", "y"] and ds.in_chans == 1
    image, target = ds.train[3]
    assert image.shape == (5, 6, 1) and target.dtype == np.float32 and target.tolist() == [3.0, -3.0]

    bad = write_csv(tmp_path / "bad.csv", "path,target", ["im/0.jpg,1.0", "im/1.jpg,big", "im/2.jpg,nan"])
    with pytest.raises(PlugtrainError, match=r"bad.csv:3: .*target target = 'big' is not a number \(and 1 more"):
        build("csv", {"csv": str(bad), "val_csv": str(bad)})
    ds = build("csv", {"csv": str(bad), "val_csv": str(bad)}, on_error="skip")
    assert ds.train.targets == [1.0] and ds.train.skipped == 2


def test_csv_structure_errors(tmp_path):
    write_image(tmp_path / "0.png", 0)
    with pytest.raises(PlugtrainError, match="csv manifest '.*nope.csv' does not exist"):
        build("csv", {"csv": str(tmp_path / "nope.csv")})
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(PlugtrainError, match="is empty"):
        build("csv", {"csv": str(empty)})
    nopath = write_csv(tmp_path / "h.csv", "file,label", ["0.png,0"])
    with pytest.raises(PlugtrainError, match=r"h.csv:1: the header needs a 'path' column.*found: file, label"):
        build("csv", {"csv": str(nopath)})
    ragged = write_csv(tmp_path / "r.csv", "path,label", ["0.png,0", "0.png,0,extra"])
    with pytest.raises(PlugtrainError, match=r"r.csv:3: expected 2 fields, found 3"):
        build("csv", {"csv": str(ragged), "val_csv": str(ragged)})
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"path,label\n\xff\xfe\x00,1\n")
    with pytest.raises(PlugtrainError, match="not UTF-8"):
        build("csv", {"csv": str(binary)})


# ---------------------------------------------------------------------------------------------------- idx


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx(root: Path, n_train: int = 50, n_test: int = 10, gz: bool = False, train_labels=None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = np.arange(n_train, dtype=np.uint8) % 10 if train_labels is None else np.asarray(train_labels, np.uint8)
    images = rng.integers(0, 256, (n_train, 7, 6), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n_train)  # identifies the sample
    write_idx(root / "train-images-idx3-ubyte", images, gz)
    write_idx(root / "train-labels-idx1-ubyte", labels, gz)
    write_idx(root / "t10k-images-idx3-ubyte", images[:n_test], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", labels[:n_test], gz)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gzipped(tmp_path, gz):
    make_idx(tmp_path, gz=gz)
    ds = build("idx", {"root": str(tmp_path), "class_names": "fashion"})
    assert ds.class_names[9] == "Ankle boot" and ds.in_chans == 1
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 10)
    assert sorted(ds.val.targets) == list(range(10))  # stratified
    for split in (ds.train, ds.val, ds.test):
        for i in range(len(split)):
            image, target = split[i]
            assert image.shape == (7, 6, 1) and image.dtype == np.uint8 and image.flags.writeable
            assert target == split.targets[i] == image[0, 0, 0] % 10
    restored = pickle.loads(pickle.dumps(ds.train))
    assert (restored[3][0] == ds.train[3][0]).all()
    if not gz:
        assert len(pickle.dumps(ds.train)) < 2000  # a memory map is reopened, not copied

    ds = build("idx", {"root": str(tmp_path), "val_split": "test", "channels": 3})
    assert (len(ds.train), len(ds.val), ds.test) == (50, 10, None)
    assert ds.val[0][0].shape == (7, 6, 3) and ds.class_names == [str(d) for d in range(10)]


def test_idx_faults(tmp_path):
    make_idx(tmp_path, train_labels=[0, 1, 2, 7, 1, 0, 2, 1, 0, 2] * 5)
    with pytest.raises(PlugtrainError) as info:
        build("idx", {"root": str(tmp_path), "class_names": ["a", "b", "c"]})
    assert str(info.value).startswith(f"{tmp_path / 'train-labels-idx1-ubyte'}: label 7 at index 3 out of range")
    ds = build("idx", {"root": str(tmp_path), "class_names": ["a", "b", "c"]}, on_error="skip")
    assert len(ds.train) + len(ds.val) == 45 and ds.train.skipped == 5 and ds.test.skipped == 1
    assert 7 not in ds.train.targets + ds.val.targets

    with pytest.raises(PlugtrainError, match="IDX dataset root '.*nowhere' does not exist"):
        build("idx", {"root": str(tmp_path / "nowhere")})
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PlugtrainError, match="has no matching labels file"):
        build("idx", {"root": str(tmp_path)})
    with pytest.raises(PlugtrainError, match=r"t10k-labels-idx1-ubyte' \(or .*\.gz'\) does not exist"):
        build("idx", {"root": str(tmp_path), "val_split": "test"})
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00")
    with pytest.raises(PlugtrainError, match="is truncated: 1 data bytes, 1000 expected"):
        build("idx", {"root": str(tmp_path)})
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(PlugtrainError, match="is not an IDX file"):
        build("idx", {"root": str(tmp_path)})
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    with pytest.raises(PlugtrainError, match="holds 3 images but .* 50 labels"):
        build("idx", {"root": str(tmp_path)})


# ---------------------------------------------------------------------------------------------------- sklearn digits


def test_sklearn_digits_split_follows_the_seed():
    ds = build("sklearn-digits", {}, seed=0)
    assert (len(ds.train), len(ds.val)) == (1438, 359) and ds.in_chans == 1 and ds.num_classes == 10
    image, target = ds.train[0]
    assert image.shape == (32, 32, 1) and image.dtype == np.uint8 and target == ds.train.targets[0]
    counts = np.bincount(ds.val.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    other = build("sklearn-digits", {"upscale": 2}, seed=1)
    assert other.train[0][0].shape == (16, 16, 1)
    assert other.val.targets != ds.val.targets
    assert build("sklearn-digits", {}, seed=0).val.targets == ds.val.targets


# ---------------------------------------------------------------------------------------------------- DataLoader


def test_splits_decode_in_dataloader_workers(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    values = make_folder(tmp_path, {"a": 4, "b": 4})
    ds = build("imagefolder", {"root": str(tmp_path), "val_fraction": 0.25})
    loader = DataLoader(ds.train, batch_size=3, num_workers=2, shuffle=False)
    seen = []
    for images, targets in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (5, 6, 3) and targets.dtype == torch.int64
        seen.extend(int(v) for v in images[:, 0, 0, 0])
    assert seen == [values[Path(p)] for p in ds.train.paths]
