"""plugtrain-segmentation through the real CLI, on segmentation data derived from REAL Fashion-MNIST images.

The data (``seg_fmnist_data``): 56x56 canvases of two Fashion-MNIST items each, the mask of each item its Otsu
foreground labelled with its class (4 classes + background). One small U-Net (smp, resnet18 encoder cut to 3
stages, 32x32 inputs) is trained once for the module; the tests read its run directory, evaluate it, predict with
it, export it to ONNX, and SIGKILL + ``--resume auto`` a twin run to compare bit for bit. Nothing is mocked and
nothing is downloaded (``encoder_weights`` stays unset).

This file is self-contained (no conftest.py: the core suite's ``tests/conftest.py`` is imported by name, so a second
``conftest`` module here would shadow it when both suites run in one pytest session).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core suite's helpers, run alone too
import seg_fmnist_data  # noqa: E402
from helpers_cli import child_env, in_process  # noqa: E402
from helpers_faults import Run, assert_same_training_state, kill_after_checkpoint  # noqa: E402

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not seg_fmnist_data.available(), reason="Debian's dataset-fashion-mnist is missing")]

CLASSES = ["background", "Trouser", "Sandal", "Bag", "Ankle boot"]
SPEC = """\
[run]
name = "{name}"
output_dir = "{out}"
seed = 0
epochs = {epochs}
task = "segmentation"

[data]
dataset = "segmentation-pairs"
train = "{data}/train"
val = "{data}/val"
class_names = {classes}
channels = 1
image_size = 32
batch_size = 8
num_workers = {workers}

[backbone]
name = "smp-Unet"
encoder_name = "tu-test_resnet"   # a timm encoder, tiny
encoder_depth = 3
in_chans = 1

[loss]
name = "{loss}"

[optimizer]
name = "AdamW"
lr = 3e-3

[augmentations]
train = [{augment}]

[trainer]
precision = "fp32"
checkpoint_every_steps = 1
{extra}
"""
AUGMENT = '{ name = "HorizontalFlip", p = 0.5 }, { name = "RandomBrightnessContrast", p = 0.5 }'


def env() -> dict[str, str]:
    return child_env(HF_HUB_OFFLINE="1")


def plugtrain(*args, cwd=None, timeout=240) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process (training: its own interpreter, one thread)."""
    return subprocess.run([sys.executable, "-m", "plugtrain", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=cwd)


@pytest.fixture
def cli(capfd, monkeypatch):
    """The CLI in this process (``cli(ARGS...)`` -> CompletedProcess): commands that train nothing, without the
    seconds a fresh interpreter spends importing torch."""
    return in_process(capfd, monkeypatch, HF_HUB_OFFLINE="1")


def write_spec(folder: Path, name: str, data: Path, *, epochs: int = 4, loss: str = "DiceCE",
               augment: str = AUGMENT, workers: int = 0, extra: str = "", dataset_lines: str = "") -> Path:
    text = SPEC.format(name=name, out=folder / "runs", epochs=epochs, data=data, classes=json.dumps(CLASSES),
                       loss=loss, augment=augment, workers=workers, extra=extra)
    if dataset_lines:
        text = text.replace('dataset = "segmentation-pairs"\n', f'dataset = "segmentation-pairs"\n{dataset_lines}\n')
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def metric_rows(path: Path) -> list[dict[str, str]]:
    timing = ("train/throughput", "train/epoch_time", "train/data_time", "train/compute_time", "train/step_time")
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist-seg")
    assert seg_fmnist_data.write(root, n_train=96, n_val=32, csv=True) == CLASSES
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """The reference run: 4 epochs of 12 steps; its run directory."""
    work = tmp_path_factory.mktemp("seg-run")
    spec = write_spec(work, "seg", data)
    proc = plugtrain("train", spec)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work / "runs" / "seg"


def background_baseline(data: Path) -> float:
    """The mean IoU of predicting background everywhere on the validation masks."""
    from PIL import Image

    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((data / "val" / "masks").glob("*.png"))])
    return float((masks == 0).mean()) / len(CLASSES)  # background IoU = its pixel share; every other class 0


def test_trains_well_above_the_all_background_baseline(trained, data):
    rows = metric_rows(trained / "metrics.csv")
    assert len(rows) == 4
    miou = max(float(r["val/miou"]) for r in rows)
    baseline = background_baseline(data)
    assert baseline < 0.2
    assert miou > max(2 * baseline, baseline + 0.15), (miou, baseline)  # about 0.42 against 0.17 (README)
    for i in range(len(CLASSES)):  # the IoU of every class is logged
        assert 0.0 <= float(rows[-1][f"val/iou_per_class/{i}"]) <= 1.0
    assert float(rows[-1]["val/iou_per_class/0"]) > 0.9  # the background is found


def test_evaluate_reports_iou_per_class_by_name(trained, cli):
    proc = cli("evaluate", trained, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert 0 <= report["metrics"]["val/miou"] <= 1
    per = report["per_class"]
    assert set(per) == set(CLASSES)
    assert all(0.0 <= v["iou"] <= 1.0 for v in per.values())


def test_predict_writes_a_mask_png_per_image(trained, data, tmp_path, cli):
    from PIL import Image

    from plugtrain.inference import open_model

    images = sorted((data / "val" / "images").glob("*.png"))
    out = tmp_path / "masks"
    results = open_model(str(trained)).predict([str(p) for p in images], out_dir=out)
    assert [r["mask_file"] for r in results] == [str(out / f"{p.stem}.mask.png") for p in images]
    assert all("mask" not in r and 0.5 < r["classes"]["background"] <= 1 for r in results)
    inter = union = 0
    for r, image in zip(results, images, strict=True):
        mask = Image.open(r["mask_file"])
        assert mask.mode == "P" and mask.size == (56, 56)  # the image's own size (the model saw it at 32x32)
        values = np.asarray(mask)
        assert values.max() < len(CLASSES)
        truth = np.asarray(Image.open(data / "val" / "masks" / image.name))
        inter += ((values > 0) & (truth > 0)).sum()
        union += ((values > 0) | (truth > 0)).sum()
    # the IoU of the predicted foreground (any class) with the true one, over every validation image: 0 for the
    # all-background baseline, about 0.6 here (the masks are the model's 32x32 ones, scaled up)
    assert inter / union > 0.45
    proc = cli("predict", trained, *images[:2])  # the command line: a line per image with each class's share
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(re.match(r".+\t32x32 mask: background \d+\.\d%", line) for line in lines), lines


def test_predict_out_on_the_command_line_writes_masks_and_never_overwrites_unasked(trained, data, tmp_path, cli):
    images = sorted((data / "val" / "images").glob("*.png"))[:2]
    out = tmp_path / "masks"
    proc = cli("predict", trained, *images, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [out / f"{p.stem}.mask.png" for p in images]
    assert [r["mask_file"] for r in json.loads(proc.stdout)] == [str(f) for f in files]
    assert all(f.stat().st_size > 0 for f in files) and sorted(out.iterdir()) == sorted(files)
    files[0].write_bytes(b"mine")  # a user's file: a second predict into the folder must not replace it unasked
    proc = cli("predict", trained, *images, "--out", out)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and files[0].read_bytes() == b"mine"
    proc = cli("predict", trained, *images, "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files[0].read_bytes()[:4] == b"\x89PNG" and len(proc.stdout.strip().splitlines()) == 2
    twin = tmp_path / "other" / images[0].name  # two images of one name would write one mask file
    twin.parent.mkdir()
    twin.write_bytes(images[0].read_bytes())
    proc = cli("predict", trained, images[0], twin, "--out", tmp_path / "new")
    assert proc.returncode == 2 and "same name" in proc.stderr and not (tmp_path / "new").exists(), proc.stderr
    proc = cli("predict", trained, images[0], "--out", images[1])  # a file, not a folder
    assert proc.returncode == 2 and "is a file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_onnx_export_matches_the_eager_model(trained, data, tmp_path, cli):
    import onnxruntime as ort
    import torch

    from plugtrain.core.registry import get_registry

    out = tmp_path / "model.onnx"
    proc = cli("export", trained, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecars = [p for p in tmp_path.iterdir() if p.suffix == ".json"]
    assert sidecars, list(tmp_path.iterdir())
    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["task"] == "segmentation" and sidecar["class_names"] == CLASSES
    assert sidecar["output"]["name"] == "mask_logits" and "per-pixel" in sidecar["output"]["meaning"]
    assert sidecar["output"]["shape"] == ["batch", len(CLASSES), "height", "width"]
    model = get_registry().get("backbones", "smp-Unet").build(
        {"encoder_name": "tu-test_resnet", "encoder_depth": 3, "in_chans": 1}, num_classes=len(CLASSES))
    state = torch.load(trained / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    model.eval()
    x = torch.rand(2, 1, 32, 32) * 255  # raw pixel values: the graph normalises inside (the sidecar says how)
    norm = sidecar["normalization"]
    assert norm["included"] and sidecar["input"]["range"] == [0, 255]
    mean, std = (torch.tensor(norm[k], dtype=torch.float32).view(1, -1, 1, 1) * 255 for k in ("mean", "std"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert [o.name for o in session.get_outputs()] == ["mask_logits"]
    with torch.no_grad():
        want = model((x - mean) / std).numpy()
    assert got.shape == want.shape == (2, len(CLASSES), 32, 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bitwise_exact(trained, data, tmp_path):
    """A twin of the reference run (two loader workers, the same spec otherwise), SIGKILLed in the middle of epoch 2
    of 4 and resumed with ``--resume auto``, ends with the reference's weights, optimizer state and metrics, bit for
    bit."""

    spec = write_spec(tmp_path, "seg", data, workers=2)
    run_dir = tmp_path / "runs" / "seg"
    run = Run([sys.executable, "-m", "plugtrain", "train", str(spec)], env=env())
    # kill as soon as a mid-epoch checkpoint of epoch 2 is on disk
    kill_after_checkpoint(run, run_dir / "checkpoints" / "last.pt", r"epoch 2\b", epoch=1, batch=2)
    resumed = plugtrain("train", spec, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_training_state(run_dir / "checkpoints" / "last.pt", trained / "checkpoints" / "last.pt")
    assert metric_rows(run_dir / "metrics.csv") == metric_rows(trained / "metrics.csv")



# -- masks follow the augmentations; bad input is one message ---------------------------------------------------------


def test_the_extra_registers_the_task_and_its_components(cli):
    proc = cli("list", "tasks", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["segmentation"]["distribution"].startswith("plugtrain-segmentation")
    assert {"classification", "regression", "metric_learning"} <= set(rows)
    proc = cli("list", "backbones", "--json")
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert {"smp-Unet", "smp-FPN", "smp-DeepLabV3Plus"} <= names


def test_geometric_transforms_move_the_mask_colour_ones_leave_it():
    import albumentations as A
    from plugtrain_segmentation.task import SegmentationTask

    task = SegmentationTask()
    image = np.zeros((8, 8, 1), np.uint8)
    image[:, :2] = 200
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :2] = 3
    img, m = task.augment(A.Compose([A.HorizontalFlip(p=1.0)]), image, mask)
    assert (m[:, -2:] == 3).all() and (m[:, :-2] == 0).all() and (img[:, -2:, 0] == 200).all()
    img, m = task.augment(A.Compose([A.RandomBrightnessContrast(p=1.0, brightness_limit=(0.3, 0.3))]), image, mask)
    assert np.array_equal(m, mask) and not np.array_equal(img, image)
    img, m = task.augment(A.Compose([A.Resize(16, 16)]), image, mask)
    assert m.shape == (16, 16) and set(np.unique(m)) == {0, 3}  # nearest neighbour: classes stay classes
    batch = task.collate([m, m])
    assert batch.dtype.is_floating_point is False and tuple(batch.shape) == (2, 16, 16)


def test_a_transform_that_cannot_carry_a_mask_is_refused(data, tmp_path, cli):
    from plugtrain_segmentation.task import mask_problem

    def image_only_callable(image):
        return {"image": image[:, ::-1]}

    assert "cannot carry a segmentation mask" in mask_problem(image_only_callable)
    spec = write_spec(tmp_path, "bad-aug", data, augment='{ name = "CubicSymmetry", p = 1.0 }')
    proc = cli("train", spec)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CubicSymmetry cannot carry a segmentation mask" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "bad-aug").exists()


def test_check_refuses_a_spec_without_masks_or_with_another_tasks_loss_or_metric(data, tmp_path, cli):
    wrong_loss = write_spec(tmp_path, "ce", data, loss="CrossEntropy")
    proc = cli("check", wrong_loss)
    assert proc.returncode == 2 and "CrossEntropy" in proc.stderr and "segmentation" in proc.stderr, proc.stderr
    wrong_metric = write_spec(tmp_path, "acc", data, extra='\n[[metrics]]\nname = "accuracy"\n')
    proc = cli("check", wrong_metric)
    assert proc.returncode == 2 and "accuracy" in proc.stderr, proc.stderr
    no_masks = tmp_path / "digits.toml"
    no_masks.write_text(f"""\
[run]
name = "digits"
output_dir = "{tmp_path / 'runs'}"
task = "segmentation"

[data]
dataset = "sklearn-digits"
image_size = 16

[backbone]
name = "smp-Unet"
encoder_depth = 3
in_chans = 1

[loss]
name = "DiceCE"

[optimizer]
name = "AdamW"
""", encoding="utf-8")
    proc = cli("check", no_masks)  # the datasets declare their targets: check knows before anything is built
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    line = no_masks.read_text().splitlines().index('dataset = "sklearn-digits"') + 1
    assert (f"{no_masks}:{line}:11: data.dataset: dataset 'sklearn-digits' yields classification or regression targets, "
            "but run.task = 'segmentation' needs segmentation targets. Datasets that fit: segmentation-pairs."
            ) in proc.stderr
    proc = cli("train", no_masks)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sklearn-digits" in proc.stderr and "segmentation" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "digits").exists()


def test_csv_pairs_and_bad_masks_name_the_file(data, tmp_path):
    from PIL import Image
    from plugtrain_segmentation.dataset import segmentation_pairs

    from plugtrain.core.data import SampleError

    by_csv = segmentation_pairs(str(data / "train.csv"), CLASSES, val=str(data / "val.csv"), channels=1)
    by_dir = segmentation_pairs(str(data / "train"), CLASSES, val=str(data / "val"), channels=1)
    assert len(by_csv.train) == len(by_dir.train) == 96 and by_csv.task == "segmentation"
    image, mask = by_csv.train[3]
    image2, mask2 = by_dir.train[3]
    assert image.shape == (56, 56, 1) and mask.shape == (56, 56)
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)

    split = tmp_path / "bad"
    (split / "images").mkdir(parents=True)
    (split / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(split / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(split / "masks" / "a.png")  # an RGB "mask"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(split / "images" / "b.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(split / "masks" / "b.png")  # 7 is no class
    ds = segmentation_pairs(str(split), CLASSES, val=str(split), channels=1)
    with pytest.raises(SampleError, match="palette or grey") as exc:
        ds.train[0]
    assert exc.value.path.endswith("a.png")
    with pytest.raises(SampleError, match="mask value 7 is not a class index"):
        ds.train[1]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(split / "images" / "c.png")
    from plugtrain.core.errors import PlugtrainError

    with pytest.raises(PlugtrainError, match="have no mask of the same name.*'c.png'"):
        segmentation_pairs(str(split), CLASSES, channels=1)


def test_ignore_index_pixels_count_for_nothing_in_losses_and_metrics():
    import torch
    from plugtrain_segmentation import losses, metrics

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8)
    masks = torch.randint(0, 5, (2, 8, 8))
    masks[:, :2] = 255  # unlabelled rows
    changed = logits.clone()
    changed[:, :, :2] = torch.randn(2, 5, 2, 8) * 10  # whatever the model says there
    for make in (losses.seg_cross_entropy, losses.dice, losses.focal, losses.lovasz, losses.dice_ce):
        loss = make()
        assert torch.allclose(loss(logits, masks), loss(changed, masks)), make.__name__
    for make in (metrics.miou, metrics.iou_per_class, metrics.mdice, metrics.pixel_accuracy):
        a, b = make(num_classes=5), make(num_classes=5)
        a.update(logits, masks)
        b.update(changed, masks)
        assert torch.allclose(a.compute(), b.compute()), make.__name__
    perfect = metrics.miou(num_classes=5)
    perfect.update(torch.nn.functional.one_hot(masks.clamp(max=4), 5).permute(0, 3, 1, 2).float(), masks)
    assert float(perfect.compute()) == 1.0
