"""Issue 24: scientific images — 16-bit and float pixels, any channel count, TIFF and NumPy files — on real data.

The files are made from real Fashion-MNIST images (``helpers_sciimages``): the same pictures as 8-bit PNGs, 16-bit
grey TIFFs (x 257), 4-page 16-bit TIFF stacks and float32 ``.npy`` stacks. They are read as stored
(``pixels = "raw"``), trained on, and each of the 16-bit grey, 4-channel TIFF and ``.npy`` formats is cached,
sharded (read back losslessly), evaluated, predicted (files and arrays) and exported to ONNX (the graph fed the raw
pixels as its sidecar describes gives the eager model's outputs); bad data and transforms that cannot take them are
refused before training with one located message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from helpers_sciimages import FASHION, spec_over, stack4, write_fashion_folders

from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry
from plugtrain.plugins.datasets.decode import decode_bytes, decode_image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (.ci/run)")

RAW = {"pixels": "raw"}
#: The scientific formats, each as its run reads it: the data parameters and the dtype its pixels keep.
FORMATS = {
    "tiff16": ({"channels": 1, **RAW}, "uint16"),
    "tiff4": ({"channels": 4, **RAW}, "uint16"),
    "npy4": ({"channels": [0, 3], "npy_layout": "CHW", **RAW}, "float32"),
}
SCIENTIFIC = pytest.mark.parametrize("fmt", list(FORMATS))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return write_fashion_folders(tmp_path_factory.mktemp("sci") / "data", per_class=32, val_per_class=12)


def _folder(root: Path, **params) -> dict:
    return {"dataset": "imagefolder", "root": str(root), **params}


def _best(run_dir: Path) -> float:
    rows = [r for r in (run_dir / "metrics.csv").read_text().splitlines()[1:] if r]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    col = header.index("val/accuracy")
    return max(float(r.split(",")[col]) for r in rows if r.split(",")[col] not in ("", "nan"))


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """Four real runs (same seed, same model, 2 short epochs): the 8-bit PNGs, the 16-bit TIFFs, the 4-channel TIFF
    stacks (decoded-sample cache in memory) and two channels of the .npy stacks (mean/std from the training split)."""
    tmp = tmp_path_factory.mktemp("runs")
    out = tmp / "runs"
    specs = {
        "png8": spec_over(tmp / "png8.toml", out, _folder(folders["png8"], channels=1), 1),
        "tiff16": spec_over(tmp / "tiff16.toml", out, _folder(folders["tiff16"], channels=1, **RAW), 1),
        "tiff4": spec_over(tmp / "tiff4.toml", out, _folder(folders["tiff4"], channels=4, cache="memory", **RAW), 4),
        "npy4": spec_over(tmp / "npy4.toml", out, _folder(folders["npy4"], channels=[0, 3], npy_layout="CHW", **RAW),
                          2, augmentations={"stats": "train"}),
    }
    for name, spec in specs.items():
        assert cli("train", spec) == 0, name
    return {name: out / name for name in specs}


# -- decoding ------------------------------------------------------------------------------------------------------
def test_raw_decoding_keeps_16_bit_values_channels_and_layouts(folders):
    png = next((folders["png8"] / "train" / "bag").iterdir())
    name = png.stem
    original = decode_image(png, 1)[..., 0]
    grey16 = decode_image(folders["tiff16"] / "train" / "bag" / f"{name}.tif", 1, pixels="raw")
    assert grey16.dtype == np.uint16 and grey16.shape == (28, 28, 1)
    assert np.array_equal(grey16[..., 0], original.astype(np.uint16) * 257)  # every 16-bit value kept
    # the 8-bit default reads the same 16-bit file as before: the high byte, i.e. the original picture
    assert np.array_equal(decode_image(folders["tiff16"] / "train" / "bag" / f"{name}.tif", 1)[..., 0], original)
    tif4 = folders["tiff4"] / "train" / "bag" / f"{name}.tif"
    stack = decode_image(tif4, 4, pixels="raw")
    assert stack.dtype == np.uint16 and np.array_equal(stack, np.moveaxis(stack4(original), 0, -1))
    picked = decode_image(tif4, [3, 0], pixels="raw")
    assert np.array_equal(picked, stack[..., [3, 0]])
    npy = decode_image(folders["npy4"] / "train" / "bag" / f"{name}.npy", 4, pixels="raw", npy_layout="CHW")
    assert npy.dtype == np.float32 and np.allclose(npy * 65535, stack, atol=0.02)
    assert np.array_equal(decode_bytes(tif4.read_bytes(), "x.tif", [3, 0], pixels="raw"), picked)


def test_raw_decoding_faults_name_the_file(folders, tmp_path):
    tif4 = sorted((folders["tiff4"] / "train" / "bag").iterdir())[0]
    with pytest.raises(SampleError, match=rf"{tif4.name}: has 4 channel\(s\) but the data set's channels = 3"):
        decode_image(tif4, 3, pixels="raw")
    with pytest.raises(SampleError, match=r"asks for index 4"):
        decode_image(tif4, [0, 4], pixels="raw")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(tif4.read_bytes()[:600])
    with pytest.raises(SampleError, match=r"cut\.tif: not a readable TIFF file"):
        decode_image(cut, 4, pixels="raw")


def test_channel_parameters_are_checked_at_build(folders):
    imagefolder = get_registry().get("datasets", "imagefolder")
    for params, message in (({"channels": 4}, r'channels must be 1 or 3 with pixels = "uint8".*pixels = "raw"'),
                            ({"channels": [0, 0], **RAW}, "lists an index twice"),
                            ({"channels": 0, **RAW}, "positive count or a list"),
                            ({"pixels": "16bit"}, "pixels must be one of")):
        with pytest.raises(PlugtrainError, match=message):
            imagefolder.build({"root": str(folders["tiff4"]), **params}, seed=0, on_error="raise")


def test_idx_reads_16_bit_files_as_stored(tmp_path):
    from plugtrain.plugins.datasets.idx import read_idx

    images = np.asarray(read_idx(str(FASHION / "t10k-images-idx3-ubyte.gz")))[:60].astype(">u2") * 257
    labels = np.asarray(read_idx(str(FASHION / "t10k-labels-idx1-ubyte.gz")))[:60]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\x0b\x03" + np.array(images.shape, ">u4").tobytes()
                                                      + images.astype(">i2").tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + np.array([60], ">u4").tobytes()
                                                      + labels.astype(np.uint8).tobytes())
    idx = get_registry().get("datasets", "idx")
    with pytest.raises(PlugtrainError, match="unsigned bytes"):  # the 8-bit default refuses them, as before
        idx.build({"root": str(tmp_path)}, seed=0, on_error="raise")
    splits = idx.build({"root": str(tmp_path), **RAW}, seed=0, on_error="raise")
    image, target = splits.train[0]
    assert image.dtype == np.float32 and image.shape == (28, 28, 1)  # int16 IDX values: float32, exactly
    assert image.max() > 255 and np.array_equal(image, np.rint(image))


# -- training, normalisation, cache --------------------------------------------------------------------------------
@pytest.mark.slow
def test_16_bit_run_reaches_the_8_bit_accuracy_and_4_channel_runs_train(runs):
    acc8, acc16 = _best(runs["png8"]), _best(runs["tiff16"])
    assert acc8 >= 0.8, acc8  # trouser / bag / boot, learnable in a few steps
    assert abs(acc16 - acc8) <= 0.1, (acc8, acc16)  # the same pictures at 16 bits: the same accuracy within noise
    assert _best(runs["tiff4"]) >= 0.6 and _best(runs["npy4"]) >= 0.6


@pytest.mark.slow
def test_resolved_spec_records_scale_and_train_stats(runs, folders):
    aug16 = tomllib.loads((runs["tiff16"] / "spec.toml").read_text())["augmentations"]
    assert aug16["scale"] == 65535.0 and "mean" not in aug16
    assert "scale" not in tomllib.loads((runs["png8"] / "spec.toml").read_text())["augmentations"]  # 8-bit: as before
    aug = tomllib.loads((runs["npy4"] / "spec.toml").read_text())["augmentations"]
    assert aug["stats"] == "train" and aug["scale"] == 1.0  # float pixels: taken as they are
    mean, std = np.array(aug["mean"]), np.array(aug["std"])
    # channels 0 and 3 of the stacks are the image and its inverse: means that add up to 1, equal spreads
    assert len(mean) == len(std) == 2 and abs(mean.sum() - 1) < 1e-4 and abs(std[0] - std[1]) < 1e-4
    cached = list((runs["npy4"].parent / ".pixel-stats").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["mean"] == aug["mean"]


@SCIENTIFIC
def test_cache_stores_the_real_dtype(folders, fmt):
    params, dtype = FORMATS[fmt]
    splits = get_registry().get("datasets", "imagefolder").build(
        {"root": str(folders[fmt]), **params, "cache": "memory"}, seed=0, on_error="raise")
    train = splits.train
    chans = params["channels"] if isinstance(params["channels"], int) else len(params["channels"])
    assert train.cache.dtype == np.dtype(dtype)
    assert train.cache.total >= len(train) * 28 * 28 * chans * np.dtype(dtype).itemsize  # sized for the real dtype
    first = train[5][0]
    again = train[5][0]  # from the cache
    assert again.dtype == np.dtype(dtype) and again.shape == (28, 28, chans) and np.array_equal(first, again)
    decoded = decode_image(train.path(5), params["channels"], pixels="raw", npy_layout=params.get("npy_layout"))
    assert np.array_equal(again, decoded)


# -- downstream: evaluate, predict, shards -------------------------------------------------------------------------
def _val_images(root: Path) -> list[Path]:
    return [sorted((root / "val" / c).iterdir())[0] for c in ("boot", "bag", "trouser")]


@pytest.mark.slow
@SCIENTIFIC
def test_evaluate_predict_and_shards_read_the_same_pixels(runs, folders, fmt, tmp_path, capsys):
    from plugtrain.inference import LoadedRun

    params, dtype = FORMATS[fmt]
    run = runs[fmt]
    assert cli("evaluate", run) == 0
    image = _val_images(folders[fmt])[0]
    capsys.readouterr()
    assert cli("predict", run, image, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["image"] == str(image) and out[0]["class"] in ("boot", "bag", "trouser")
    assert abs(sum(p["probability"] for p in out[0]["top_k"]) - 1) < 1e-4
    loaded = LoadedRun(run)
    read = loaded.read(image)  # what predict reads: the file as the run's dataset reads it
    decoded = decode_image(image, params["channels"], pixels="raw", npy_layout=params.get("npy_layout"))
    assert read.dtype == np.dtype(dtype) and np.array_equal(read, decoded)
    # an array as the dataset yields it predicts as its file does
    assert loaded.predict(read)[0]["top_k"] == loaded.predict(image)[0]["top_k"]
    shards = tmp_path / "shards"
    assert cli("shards", run / "spec.toml", "--out", shards) == 0
    wds = get_registry().get("datasets", "webdataset").build({"shards": str(shards), **params}, seed=0,
                                                            on_error="raise")
    folder = get_registry().get("datasets", "imagefolder").build({"root": str(folders[fmt]), **params}, seed=0,
                                                                on_error="raise")
    by_key = {wds.val.key(i): wds.val[i][0] for i in range(len(wds.val))}
    assert len(by_key) == len(folder.val)
    assert all(a.dtype == np.dtype(dtype) for a in by_key.values())
    assert sorted(a.tobytes() for a in by_key.values()) == sorted(folder.val[i][0].tobytes()
                                                                  for i in range(len(folder.val)))  # lossless


@pytest.mark.slow
@SCIENTIFIC
def test_onnx_export_takes_raw_pixels_and_matches_the_eager_model(runs, folders, fmt):
    """The exported graph, fed the raw pixel values as the sidecar describes them (read, resized with the sidecar's
    interpolation, float32 NCHW; no scaling, no normalisation), gives the eager model's outputs."""
    pytest.importorskip("onnxruntime")
    import cv2

    from plugtrain.inference import ExportedModel, LoadedRun, onnx_session

    params, dtype = FORMATS[fmt]
    run = runs[fmt]
    assert cli("export", run, "--format", "onnx") == 0
    onnx = next((run / "export").glob("*.onnx"))
    side = json.loads((run / "export" / f"{onnx.name}.json").read_text())
    chans = params["channels"] if isinstance(params["channels"], int) else len(params["channels"])
    assert side["input"]["pixel_dtype"] == dtype and side["input"]["channels"] == chans
    assert side["input"]["range"] == ([0, 65535] if dtype == "uint16" else None)
    assert side["normalization"]["scale"] == (65535.0 if dtype == "uint16" else 1.0)
    reader = side["preprocessing"]["reader"]
    assert reader["pixels"] == "raw" and reader["layout"] == f"HxWxC {dtype}"
    assert reader["channel_indices"] == (params["channels"] if isinstance(params["channels"], list) else None)
    images = _val_images(folders[fmt])
    eager = LoadedRun(run, weights=side["weights"]).outputs(images)
    # a deployer without plugtrain: the raw pixels, the sidecar's steps (here one resize), float32 NCHW
    (step,) = side["preprocessing"]["steps"]
    batch = []
    for path in images:
        pixels = decode_image(path, params["channels"], pixels="raw", npy_layout=params.get("npy_layout"))
        resized = cv2.resize(pixels, (step["width"], step["height"]), interpolation=getattr(cv2, step["interpolation"]))
        batch.append(np.moveaxis(resized.reshape(step["height"], step["width"], chans), -1, 0).astype(np.float32))
    got = onnx_session(onnx).run(None, {side["input"]["name"]: np.stack(batch)})[0]
    assert np.abs(got - eager.numpy()).max() < 1e-3, np.abs(got - eager.numpy()).max()
    # and plugtrain's own ExportedModel (predict on the .onnx) agrees with the run, on files and on arrays of the
    # sidecar's pixel dtype; an array of another dtype (it would be scaled wrongly) is refused
    exported = ExportedModel(onnx)
    assert np.abs(exported.outputs(images).numpy() - eager.numpy()).max() < 1e-3
    arrays = [exported.read(p) for p in images]
    assert np.abs(exported.outputs(arrays).numpy() - eager.numpy()).max() < 1e-3
    with pytest.raises(PlugtrainError, match=f"an image array must be HxW or HxWxC {dtype} .*not uint8"):
        exported.predict(arrays[0].astype(np.uint8))


# -- refused before training ---------------------------------------------------------------------------------------
def test_bad_scientific_data_is_refused_before_training(folders, tmp_path, cli_run):
    import shutil

    import tifffile

    mixed = tmp_path / "mixed"
    shutil.copytree(folders["tiff16"], mixed)
    odd = mixed / "train" / "boot" / "zz-float.tif"
    tifffile.imwrite(odd, np.zeros((28, 28), np.float32))
    out = tmp_path / "runs"
    cases = {
        "mixed": (_folder(mixed, channels=1, **RAW), 1, {},
                  f"{odd}: float32 with 1 channel(s), but the data set's first file"),
        "colour": (_folder(folders["tiff4"], channels=4, **RAW), 4,
                   {"augmentations": {"train": [{"name": "HorizontalFlip"},
                                                {"name": "OneOf", "transforms": [{"name": "Blur"},
                                                                                 {"name": "ColorJitter", "p": 0.1}]}]}},
                   "[augmentations.train[1].transforms[1]] ColorJitter cannot take the data's 4-channel uint16"),
        "gamma16": (_folder(folders["tiff16"], channels=1, **RAW), 1,
                    {"augmentations": {"train": [{"name": "RandomGamma", "p": 0.2}]}},
                    "[augmentations.train[0]] RandomGamma cannot take the data's 1-channel uint16 images: it turns"),
    }
    for name, (data, chans, extra, message) in cases.items():
        spec = spec_over(tmp_path / f"{name}.toml", out, data, chans, **extra)
        proc = cli_run("train", spec)
        assert proc.returncode == 2 and message in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr and not (out / name).exists(), name


def test_check_refuses_a_mean_of_the_wrong_length(folders, tmp_path, cli_run):
    spec = spec_over(tmp_path / "m.toml", tmp_path / "runs", _folder(folders["tiff4"], channels=[0, 1, 2], **RAW), 3,
                     augmentations={"mean": [0.5, 0.5], "std": [0.2]})
    proc = cli_run("check", spec)
    assert proc.returncode == 2
    assert "m.toml:" in proc.stderr and ("augmentations.mean has 2 value(s) but the images have 3 channel(s) "
                                         "(data.channels)") in proc.stderr
