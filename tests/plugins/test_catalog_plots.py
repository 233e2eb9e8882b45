"""Visual metrics: the confusion-matrix and parity-plot images and the projector embeddings, in TensorBoard.

The metrics are the registered components; runs are the real ``plugtrain train`` command line (in this process) on
scikit-learn's digits with timm's ``test_resnet``; TensorBoard's event files and projector files are read back with
TensorBoard's own ``EventAccumulator`` and the files its projector plugin reads.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from plugtrain.core.registry import get_registry

BASE = """\
[run]
name = "{name}"
output_dir = "{out}"
epochs = {epochs}
task = "{task}"

[data]
dataset = "sklearn-digits"
val_fraction = 0.1
image_size = 16
batch_size = 16
num_workers = 0

[backbone]
name = "test_resnet"
in_chans = 1

[optimizer]
name = "AdamW"
lr = 1e-3

[trainer]
max_steps_per_epoch = 2

"""


#: One torch thread (conftest's module fixture): the machine's two cores are shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_spec(tmp_path: Path, name: str, task: str, body: str, epochs: int = 1) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name, out=(tmp_path / "runs").as_posix(), epochs=epochs, task=task) + body,
                    encoding="utf-8")
    return path


def cli(*args: object) -> int:
    from plugtrain.entrypoints.cli import main

    return main([str(a) for a in args])


def metric(name: str, num_classes: int = 0, task: str = "classification", **params):
    return get_registry().get("metrics", name).build(params, num_classes=num_classes, task=task)


def tb_images(run_dir: Path, tag: str) -> list[tuple[int, np.ndarray]]:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    if tag not in acc.Tags()["images"]:
        return []
    return [(e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")))
            for e in acc.Images(tag)]


def csv_columns(run_dir: Path) -> list[str]:
    with (run_dir / "metrics.csv").open() as f:
        return next(csv.reader(f))


# -- the metrics themselves ------------------------------------------------------------------------------------------
def test_confusion_matrix_counts_and_draws_row_shares():
    from plugtrain.plugins.metrics import confusion_matrix_geometry

    m = metric("confusion_matrix", num_classes=3)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 2, 2, 2, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5
    m.update(logits[:5], targets[:5])
    m.update(logits[5:], targets[5:])
    assert m.compute() == {}  # no scalar
    expected = torch.tensor([[2, 0, 0], [0, 1, 1], [1, 0, 3]])
    assert torch.equal(m.matrix, expected)
    image = m.image()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    left, top, cell = confusion_matrix_geometry(3)
    assert image.shape[0] >= top + 3 * cell and image.shape[1] >= left + 3 * cell

    def colour(i: int, j: int) -> np.ndarray:
        return image[top + i * cell + 2, left + j * cell + 2].astype(int)

    white = np.array([255, 255, 255])
    np.testing.assert_array_equal(colour(0, 1), white)  # share 0
    np.testing.assert_array_equal(colour(1, 0), white)
    full, half, quarter, three_q = colour(0, 0), colour(1, 1), colour(2, 0), colour(2, 2)
    np.testing.assert_array_equal(full, colour(0, 0))
    assert (full < half).all() and (half < quarter).all() and (quarter < white).all()  # darker = larger share
    np.testing.assert_array_equal(half, colour(1, 2))  # the same share, the same colour
    assert (three_q < half).all() and (full < three_q).all()
    # a new validation: reset, new data, a new picture
    m.reset()
    m.update(torch.eye(3) * 5, torch.tensor([0, 1, 2]))
    m.compute()
    assert torch.equal(m.matrix, torch.eye(3, dtype=torch.long))
    assert not np.array_equal(m.image(), image)


def test_parity_plot_places_every_point():
    from plugtrain.plugins.metrics import parity_geometry, parity_limits

    m = metric("parity_plot", task="regression")
    targets = torch.arange(10, dtype=torch.float32)
    preds = targets.clone()
    preds[3] = 8.0  # one bad prediction, far above the diagonal
    m.update(preds[:6].unsqueeze(1), targets[:6])  # (N, 1) outputs meet (N,) targets
    m.update(preds[6:], targets[6:])
    assert m.compute() == {}
    image = m.image()
    lo, hi = parity_limits(targets.numpy(), preds.numpy())
    to_pixel, size = parity_geometry(lo, hi)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    for t, p in zip(targets.tolist(), preds.tolist(), strict=True):
        x, y = to_pixel(t, p)
        assert tuple(image[y, x]) != (255, 255, 255), (t, p)
    x, y = to_pixel(7.0, 2.0)  # nothing there: below the diagonal, no point
    assert tuple(image[y, x]) == (255, 255, 255)
    with pytest.raises(ValueError, match="one prediction per target"):
        m.update(torch.zeros(4, 2), torch.zeros(4))


def test_embeddings_metric_keeps_the_first_max_points():
    m = metric("embeddings", num_classes=3, task="metric_learning", max_points=5)
    emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    m.update(emb[:3], labels[:3])
    m.update(emb[3:], labels[3:])
    assert m.compute() == {}
    vectors, names = m.embeddings()
    assert torch.equal(vectors, emb[:5]) and names == [0, 1, 2, 0, 1]
    from plugtrain.core.errors import PlugtrainError

    with pytest.raises(PlugtrainError, match="max_points"):
        metric("embeddings", max_points=0)


@pytest.mark.parametrize(("task", "visual"), [("classification", "confusion_matrix"), ("regression", "parity_plot"),
                                               ("metric_learning", "embeddings")])
def test_visual_metrics_are_defaults_per_task(tmp_path, task, visual):
    from plugtrain.core.spec import load_spec

    loss = {"classification": "CrossEntropy", "regression": "MSE", "metric_learning": "SupCon"}[task]
    body = f"[loss]\nname = \"{loss}\"\n"
    spec = load_spec(write_spec(tmp_path, "d", task, body))
    names = [m.name for m in spec.metric_specs]
    assert visual in names
    others = {"confusion_matrix", "parity_plot", "embeddings"} - {visual}
    assert not others & set(names)


# -- runs: images and embeddings in TensorBoard, nothing in metrics.csv ----------------------------------------------
def test_classification_run_logs_a_confusion_matrix_each_validation(tmp_path, capsys):
    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.evaluator import evaluate_model
    from plugtrain.core.runtime.loader import ShardedBatchSampler, make_loader
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    body = '[loss]\nname = "CrossEntropy"\n'
    path = write_spec(tmp_path, "cls", "classification", body, epochs=2)
    assert cli("train", path, "--set", "trainer.ema=true", "--set", "trainer.ema_decay=0.5") == 0, capsys.readouterr()
    run_dir = tmp_path / "runs" / "cls"
    images = tb_images(run_dir, "val/confusion_matrix")
    assert [step for step, _ in images] == [2, 4]
    assert [step for step, _ in tb_images(run_dir, "val_ema/confusion_matrix")] == [2, 4]
    assert not [c for c in csv_columns(run_dir) if "confusion" in c]
    assert "val/accuracy" in csv_columns(run_dir)

    # the last picture is the matrix of the last checkpoint's model on the validation split, drawn
    spec = load_spec(path)
    built = build_run(spec, DistEnv(), purpose="eval")
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    built.backbone.load_state_dict(state["model"])
    loader = make_loader(built.val_data, ShardedBatchSampler(len(built.val_data), 16), 0, "raise", 0,
                         persistent_workers=False)
    m = metric("confusion_matrix", num_classes=10)
    evaluate_model(built.backbone, built.criterion, loader, {"confusion_matrix": m},
                   ModelInput.for_spec(spec, built.in_chans, torch.device("cpu")), __import__("contextlib").nullcontext,
                   DistEnv(), "val")
    assert int(m.matrix.sum()) == len(built.val_data)
    np.testing.assert_array_equal(images[-1][1], m.image())


def test_regression_run_logs_a_parity_plot(tmp_path, capsys):
    body = '[loss]\nname = "MSE"\n'
    path = write_spec(tmp_path, "reg", "regression", body)
    assert cli("train", path, "--set", 'data.target="value"') == 0, capsys.readouterr()
    run_dir = tmp_path / "runs" / "reg"
    images = tb_images(run_dir, "val/parity_plot")
    assert len(images) == 1 and images[0][0] == 2 and images[0][1].shape == (420, 420, 3)
    assert images[0][1].std() > 0
    columns = csv_columns(run_dir)
    assert {"val/mae", "val/rmse", "val/r2"} <= set(columns) and not [c for c in columns if "parity" in c]


def test_metric_learning_run_puts_embeddings_in_the_projector(tmp_path, capsys):
    from plugtrain.core.runtime.build import build_dataset
    from plugtrain.core.spec import load_spec

    body = '[loss]\nname = "SupCon"\n\n[[metrics]]\nname = "precision_at_1"\n\n[[metrics]]\nname = "embeddings"\n' \
           'max_points = 50\n'
    path = write_spec(tmp_path, "ml", "metric_learning", body)
    overrides = ["backbone.embedding_dim=8"]
    assert cli("train", path, *[a for o in overrides for a in ("--set", o)]) == 0, capsys.readouterr()
    tb = tmp_path / "runs" / "ml" / "tb"
    config = (tb / "projector_config.pbtxt").read_text()
    assert re.search(r'tensor_name: "val/embeddings:0*2"', config), config
    tensor_path = re.search(r'tensor_path: "([^"]+)"', config).group(1)
    metadata_path = re.search(r'metadata_path: "([^"]+)"', config).group(1)
    vectors = np.loadtxt(tb / tensor_path, delimiter="\t", ndmin=2)
    assert vectors.shape == (50, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # the L2-normalised embeddings
    labels = (tb / metadata_path).read_text().split()
    targets = build_dataset(load_spec(path, overrides)).val.targets
    assert labels == [str(t) for t in targets[:50]]
    assert "val/precision_at_1" in csv_columns(tmp_path / "runs" / "ml")
    assert not [c for c in csv_columns(tmp_path / "runs" / "ml") if "embedding" in c]


@pytest.mark.slow
def test_visual_metrics_gather_every_rank_under_torchrun(tmp_path):
    """Two processes (gloo): the picture is the whole validation set's matrix, the projector holds every sample."""
    import contextlib
    import os
    import socket
    import subprocess
    import sys

    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.evaluator import evaluate_model
    from plugtrain.core.runtime.loader import ShardedBatchSampler, make_loader
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    body = '[loss]\nname = "CrossEntropy"\n\n[[metrics]]\nname = "accuracy"\n\n[[metrics]]\nname = ' \
           '"confusion_matrix"\n\n[[metrics]]\nname = "embeddings"\n'
    path = write_spec(tmp_path, "ddp", "classification", body)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "plugtrain", "train", str(path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "runs" / "ddp"
    (step, image), = tb_images(run_dir, "val/confusion_matrix")
    assert step == 2  # trainer.max_steps_per_epoch
    spec = load_spec(path)
    built = build_run(spec, DistEnv(), purpose="eval")
    built.backbone.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu",
                                              weights_only=True)["model"])
    loader = make_loader(built.val_data, ShardedBatchSampler(len(built.val_data), 16), 0, "raise", 0,
                         persistent_workers=False)
    m = metric("confusion_matrix", num_classes=10)
    evaluate_model(built.backbone, built.criterion, loader, {"confusion_matrix": m},
                   ModelInput.for_spec(spec, built.in_chans, torch.device("cpu")), contextlib.nullcontext, DistEnv(),
                   "val")
    np.testing.assert_array_equal(image, m.image())
    tb = run_dir / "tb"
    config = (tb / "projector_config.pbtxt").read_text()
    vectors = np.loadtxt(tb / re.search(r'tensor_path: "([^"]+)"', config).group(1), delimiter="\t", ndmin=2)
    labels = (tb / re.search(r'metadata_path: "([^"]+)"', config).group(1)).read_text().split()
    assert vectors.shape == (len(built.val_data), 10)
    assert sorted(labels) == sorted(str(t) for t in built.splits.val.targets)
