"""plugtrain-monai through the real CLI, on volumes and signals derived from REAL images (``monai_real_data``).

A 3-D run (MONAI ResNet-10, spatial_dims 3, on 12-voxel cubes stacked from Fashion-MNIST items of one class, with
seeded random flips and noise) and a 1-D run (ResNet-10, spatial_dims 1, on intensity profiles of real handwritten
digits) are trained once each for the module, in this process; the tests evaluate them, predict with them, export
them to ONNX (checked against the eager model), SIGKILL a twin of the 3-D run and resume it to compare bit for bit,
and read every file format. Nothing is mocked or downloaded.

Self-contained (no conftest.py: the core suite's ``tests/conftest.py`` is imported by name in one pytest session).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core suite's helpers, run alone too
import monai_real_data  # noqa: E402
from helpers_cli import child_env, in_process  # noqa: E402
from helpers_faults import Run, assert_same_training_state, kill_after_checkpoint  # noqa: E402

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not monai_real_data.available(), reason="Debian's dataset-fashion-mnist is missing")]

CLASSES = sorted(monai_real_data.FMNIST_CLASSES[c] for c in monai_real_data.VOLUME_CLASSES)
SPEC_3D = """\
[run]
name = "{name}"
output_dir = "{out}"
seed = 0
epochs = 2

[data]
dataset = "volumes"
train = "{data}/train"
val = "{data}/val"
image_size = [12, 12, 12]
batch_size = 8
num_workers = {workers}

[backbone]
name = "monai-resnet10"
spatial_dims = 3
in_chans = 1
widen_factor = 0.25
no_max_pool = true

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = 3e-3

[augmentations]
train = [{{ name = "monai-RandFlip", prob = 0.5, spatial_axis = 2 }},
         {{ name = "monai-RandGaussianNoise", prob = 0.5, std = 8.0 }}]

[trainer]
precision = "fp32"
checkpoint_every_steps = 1
"""
SPEC_1D = """\
[run]
name = "sig"
output_dir = "{out}"
seed = 0
epochs = 4

[data]
dataset = "volumes"
train = "{data}/train.csv"
val = "{data}/val.csv"
image_size = [64]
batch_size = 32
num_workers = 0

[backbone]
name = "monai-resnet10"
spatial_dims = 1
in_chans = 1
widen_factor = 0.5
conv1_t_size = 3
no_max_pool = true

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = 3e-3

[augmentations]
train = [{{ name = "monai-RandGaussianNoise", prob = 0.5, std = 0.05 }}]

[trainer]
precision = "fp32"
"""


def env() -> dict[str, str]:
    return child_env()


@pytest.fixture
def cli(capfd, monkeypatch):
    """The CLI in this process (``cli(ARGS...)`` -> CompletedProcess)."""
    return in_process(capfd, monkeypatch)


def _main(*args) -> int:
    from plugtrain.entrypoints.cli import main

    return main([str(a) for a in args])


def metric_rows(path: Path) -> list[dict[str, str]]:
    timing = ("train/throughput", "train/epoch_time", "train/data_time", "train/compute_time", "train/step_time")
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """12 training and 6 val volumes per class, in .npy, multi-page TIFF and NIfTI files by turns."""
    return monai_real_data.make_volumes(tmp_path_factory.mktemp("volumes"), per_class=12, size=12,
                                        formats=(".npy", ".tif", ".nii.gz"))


@pytest.fixture(scope="module")
def trained3d(tmp_path_factory, volumes) -> Path:
    work = tmp_path_factory.mktemp("vol-run")
    spec = work / "vol.toml"
    spec.write_text(SPEC_3D.format(name="vol", out=work / "runs", data=volumes, workers=0), encoding="utf-8")
    assert _main("train", spec) == 0
    return work / "runs" / "vol"


@pytest.fixture(scope="module")
def trained1d(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sig-run")
    data = monai_real_data.make_signals(work / "data", limit=960)
    spec = work / "sig.toml"
    spec.write_text(SPEC_1D.format(out=work / "runs", data=data), encoding="utf-8")
    assert _main("train", spec) == 0
    return work / "runs" / "sig"


def test_3d_run_trains_well_above_chance_and_evaluates(trained3d, cli):
    rows = metric_rows(trained3d / "metrics.csv")
    assert len(rows) == 2 and max(float(r["val/accuracy"]) for r in rows) >= 0.75  # chance: 1/3
    proc = cli("evaluate", trained3d, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["metrics"]["val/accuracy"] >= 0.75


def test_3d_predict_reads_every_format_of_a_folder(trained3d, volumes, cli):
    folder = volumes / "val" / "Bag"
    proc = cli("predict", trained3d, folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(str(folder))]
    assert {Path(line.split("\t")[0]).name.split(".", 1)[1] for line in lines} == {"npy", "tif", "nii.gz"}
    right = sum(line.split("\t")[1].split()[0] == "Bag" for line in lines)
    assert len(lines) == 6 and right >= 4


def test_3d_onnx_export_matches_the_eager_model(trained3d, tmp_path, cli):
    import onnxruntime as ort
    import torch

    from plugtrain.core.registry import get_registry

    out = tmp_path / "vol.onnx"
    proc = cli("export", trained3d, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads(next(p for p in tmp_path.iterdir() if p.suffix == ".json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 1, 12, 12, 12] and sidecar["input"]["layout"] == "NCDHW"
    assert sidecar["input"]["spatial_size"] == [12, 12, 12] and "height" not in sidecar["input"]
    model = get_registry().get("backbones", "monai-resnet10").build(
        {"spatial_dims": 3, "in_chans": 1, "widen_factor": 0.25, "no_max_pool": True}, num_classes=3)
    model.load_state_dict(torch.load(trained3d / "checkpoints" / "best.pt", weights_only=True)["model"])
    model.eval()
    x = torch.rand(3, 1, 12, 12, 12) * 255
    norm = sidecar["normalization"]
    mean, std = (torch.tensor(norm[k]).view(1, -1, 1, 1, 1) * 255 for k in ("mean", "std"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model((x - mean) / std).numpy()
    assert got.shape == want.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_1d_run_trains_well_above_chance_evaluates_predicts_and_exports(trained1d, tmp_path, cli):
    import onnxruntime as ort

    rows = metric_rows(trained1d / "metrics.csv")
    assert max(float(r["val/accuracy"]) for r in rows) >= 0.5  # ten digits: chance 0.1
    assert cli("evaluate", trained1d).returncode == 0
    signals = sorted((trained1d.parent.parent / "data" / "signals").glob("*.npy"))[:4]
    proc = cli("predict", trained1d, *signals)
    assert proc.returncode == 0 and proc.stdout.count(".npy\t") == 4, proc.stderr[-2000:]
    out = tmp_path / "sig.onnx"
    proc = cli("export", trained1d, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 1, 64] and sidecar["input"]["layout"] == "NCL"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.stack([np.load(p)[None] for p in signals]).astype(np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (4, 10)


@pytest.mark.slow
def test_3d_sigkill_then_resume_is_bitwise_exact(trained3d, volumes, tmp_path):
    """A twin of the 3-D run (seeded random flips and noise) SIGKILLed in epoch 2 and resumed with ``--resume auto``
    ends with the reference's weights, optimizer state and metrics, bit for bit."""

    spec = tmp_path / "vol.toml"
    spec.write_text(SPEC_3D.format(name="vol", out=tmp_path / "runs", data=volumes, workers=0), encoding="utf-8")
    run_dir = tmp_path / "runs" / "vol"
    run = Run([sys.executable, "-m", "plugtrain", "train", str(spec)], env=env())
    # kill as soon as a mid-epoch checkpoint of epoch 2 is on disk
    kill_after_checkpoint(run, run_dir / "checkpoints" / "last.pt", r"epoch 1/2 .*val/", epoch=1, batch=1)
    assert _main("train", spec, "--resume", "auto") == 0
    assert_same_training_state(run_dir / "checkpoints" / "last.pt", trained3d / "checkpoints" / "last.pt")
    assert metric_rows(run_dir / "metrics.csv") == metric_rows(trained3d / "metrics.csv")



# -- components, readers and bad input ---------------------------------------------------------------------------------


def test_the_extra_registers_backbones_transforms_roles_and_the_dataset():
    from plugtrain.core.registry import get_registry

    reg = get_registry()
    names = set(reg.names("backbones"))
    assert {f"monai-resnet{d}" for d in (10, 18, 34, 50, 101, 152, 200)} <= names
    assert {"monai-DenseNet121", "monai-DenseNet169", "monai-EfficientNetBN", "monai-SEResNet50", "monai-ViT"} <= names
    assert reg.get("backbones", "monai-ViT").fits.spatial_dims == (1, 2, 3)
    assert {"monai-RandFlip", "monai-RandAffine", "monai-RandGaussianNoise"} <= set(reg.names("augmentations"))
    assert not any(n.startswith("monai-") and n.endswith("d") and n[:-1] in reg.names("augmentations")
                   for n in reg.names("augmentations"))  # the array transforms, not their dictionary twins
    for role in ("resize:1d", "resize:3d", "compose:1d", "compose:3d"):
        assert reg.with_role("augmentations", role).plugin == "monai"
    assert reg.with_role("augmentations", "resize").name == "Resize"  # 2-D images keep albumentations'


@pytest.mark.parametrize("name, params, shape", [
    ("monai-resnet18", {"spatial_dims": 1, "in_chans": 2, "widen_factor": 0.25}, (2, 2, 32)),
    ("monai-DenseNet121", {"spatial_dims": 2, "in_chans": 3, "init_features": 8, "growth_rate": 4}, (2, 3, 32, 32)),
    ("monai-EfficientNetBN", {"spatial_dims": 1, "in_chans": 1}, (2, 1, 64)),
    ("monai-SEResNet50", {"spatial_dims": 1, "in_chans": 1}, (2, 1, 32)),
    ("monai-ViT", {"spatial_dims": 3, "in_chans": 1, "img_size": [8, 8, 8], "hidden_size": 16, "mlp_dim": 16,
                   "num_layers": 1, "num_heads": 2}, (2, 1, 8, 8, 8)),
])
def test_backbones_map_any_rank_and_channels_to_logits(name, params, shape):
    import torch

    from plugtrain.core.registry import get_registry

    model = get_registry().get("backbones", name).build(params, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (2, 5)


def test_check_refuses_bad_backbone_parameters_and_2d_transforms_on_volumes(tmp_path, volumes, cli):
    spec = tmp_path / "bad.toml"
    text = SPEC_3D.format(name="bad", out=tmp_path / "runs", data=volumes, workers=0)
    spec.write_text(text.replace("spatial_dims = 3", "spatial_dims = 4").replace(
        'name = "monai-RandFlip", prob = 0.5, spatial_axis = 2', 'name = "HorizontalFlip"'), encoding="utf-8")
    proc = cli("check", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.search(rf"{re.escape(str(spec))}:\d+:\d+: backbone.spatial_dims: .*4", proc.stderr), proc.stderr
    assert re.search(rf"{re.escape(str(spec))}:\d+:\d+: augmentations.train\[0\].name: transform 'HorizontalFlip' "
                     r"takes 2-D images, but data.image_size = \[12, 12, 12\] gives 3-D volumes", proc.stderr)
    spec.write_text(text.replace("image_size = [12, 12, 12]", "image_size = 12"), encoding="utf-8")
    proc = cli("check", spec)
    assert proc.returncode == 2 and re.search(r"augmentations.train\[0\].name: transform 'monai-RandFlip' takes "
                                              r"1-D signals or 3-D volumes, but data.image_size = 12 gives 2-D",
                                              proc.stderr), proc.stderr


def test_readers_give_the_same_sample_from_every_format_and_csv_errors_name_the_line(tmp_path):
    from plugtrain_monai.dataset import as_sample, load_array, volumes

    from plugtrain.core.errors import PlugtrainError

    volume = np.random.default_rng(0).integers(0, 255, (4, 6, 5), dtype=np.uint8)
    arrays = []
    for suffix in (".npy", ".tif", ".nii.gz"):
        monai_real_data.write(tmp_path / f"v{suffix}", volume)
        arrays.append(as_sample(load_array(str(tmp_path / f"v{suffix}")), 3, "v"))
    for a in arrays:
        assert a.shape == (4, 6, 5, 1) and a.dtype == np.uint8 and np.array_equal(a[..., 0], volume)
    (tmp_path / "train.csv").write_text("path,label\nv.npy,a\nv.tif,b\nv.nii.gz,c\n")
    with pytest.raises(PlugtrainError, match=r"train.csv:3: label 'b' is not one of class_names"):
        volumes(train=str(tmp_path / "train.csv"), class_names=["a", "c"], image_size=[4, 6, 5])
    with pytest.raises(PlugtrainError, match=r"set data.image_size to the samples' spatial size, a list"):
        volumes(train=str(tmp_path / "train.csv"), image_size=16)
    (tmp_path / "reg.csv").write_text("path,target\nv.npy,1.5\nv.tif,oops\n")
    with pytest.raises(PlugtrainError, match=r"reg.csv:3: target 'oops' is not a number"):
        volumes(train=str(tmp_path / "reg.csv"), task="regression", image_size=[4, 6, 5])


def test_random_transforms_are_a_function_of_the_sample_key():
    """The pipeline reseeds every random MONAI transform from plugtrain's per-sample generator: the same key gives
    the same volume whatever ran before, another key another one."""
    from plugtrain.core.registry import get_registry
    from plugtrain.core.runtime.loader import AugmentedDataset

    reg = get_registry()
    noise = reg.get("augmentations", "monai-RandGaussianNoise").build({"prob": 1.0, "std": 10.0})
    flip = reg.get("augmentations", "monai-RandFlip").build({"prob": 0.5, "spatial_axis": 0})
    pipeline = reg.with_role("augmentations", "compose:3d").factory([flip, noise], seed=0)
    volume = np.random.default_rng(1).integers(0, 255, (6, 6, 6), dtype=np.uint8)
    data = AugmentedDataset([(volume, 0)] * 3, pipeline, seed=5, spatial_dims=3)
    first = data[(1, 2)][0]
    data[(0, 0)], data[(3, 1)]
    assert first.shape == (1, 6, 6, 6) and first.dtype.is_floating_point
    assert (data[(1, 2)][0] == first).all() and not (data[(1, 1)][0] == first).all()
