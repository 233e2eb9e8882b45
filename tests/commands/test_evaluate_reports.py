"""Per-class reports of ``plugtrain evaluate`` (issue 25, item 5): per-class precision/recall/F1/support and the
confusion matrix in ``eval-<split>.json`` with its PNG for classification, error quantiles and a residual plot for
regression; the TensorBoard confusion matrix labelled with class names. Real runs on scikit-learn's digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    from tests.conftest import cli

    tmp = tmp_path_factory.mktemp("evalrep")
    spec = tiny_spec(tmp, "cls", tmp / "runs", epochs=1, steps=3,
                     extra='\n[[loggers]]\nname = "tensorboard"\n\n[[loggers]]\nname = "csv"\n')
    assert cli("train", spec) == 0
    run = tmp / "runs" / "cls"
    assert cli("evaluate", run) == 0
    return run


def test_classification_eval_json_holds_per_class_figures_consistent_with_its_confusion_matrix(classification_run):
    record = json.loads((classification_run / "eval-val.json").read_text())
    per, cm = record["per_class"], record["confusion_matrix"]
    names = cm["classes"]
    assert names == list(per) and len(names) == 10
    counts = np.asarray(cm["counts"])
    assert counts.shape == (10, 10)
    assert sum(p["support"] for p in per.values()) == record["samples"] == counts.sum()
    assert np.trace(counts) / counts.sum() == pytest.approx(record["metrics"]["val/accuracy"], abs=1e-6)
    normalized = np.asarray(cm["normalized"])
    for k, name in enumerate(names):
        row, col, tp = counts[k].sum(), counts[:, k].sum(), counts[k, k]
        p = per[name]
        assert p["support"] == row
        assert p["recall"] == pytest.approx(tp / row if row else 0.0)
        assert p["precision"] == pytest.approx(tp / col if col else 0.0)
        f1 = 2 * p["precision"] * p["recall"] / (p["precision"] + p["recall"]) if tp else 0.0
        assert p["f1"] == pytest.approx(f1)
        if row:
            assert normalized[k] == pytest.approx(counts[k] / row)
            assert normalized[k].sum() == pytest.approx(1.0)
    png = Path(record["figures"]["confusion_matrix"])
    assert png == classification_run / "confusion-matrix-val.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and min(img.size) > 200
    assert not list(classification_run.glob(".*.tmp"))


def test_tensorboard_confusion_matrix_image_is_logged(classification_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(classification_run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]
    event = acc.Images("val/confusion_matrix")[-1]
    assert event.encoded_image_string[:8] == PNG_MAGIC and event.width > 300


def test_the_confusion_matrix_picture_is_labelled_with_class_names():
    import torch

    from plugtrain.core.registry import get_registry
    from plugtrain.plugins.metrics import confusion_matrix_geometry

    def drawn(**context) -> np.ndarray:
        m = get_registry().get("metrics", "confusion_matrix").build({}, num_classes=3, task="classification",
                                                                    **context)
        m.update(torch.eye(3) * 5, torch.arange(3))
        m.compute()
        return m.image()

    names = ["t-shirt", "trouser", "ankle boot"]
    labelled, plain = drawn(class_names=names), drawn()
    left, top, cell = confusion_matrix_geometry(3, names)
    assert left > confusion_matrix_geometry(3)[0]  # room for the names
    assert labelled.shape != plain.shape
    for k in range(3):  # each row's name is drawn in the margin left of its cells
        band = labelled[top + k * cell: top + (k + 1) * cell, 2:left - 4]
        assert (band < 128).any(), k
    assert not (plain[top:top + 3 * cell, 2:20] < 128).any()  # the indices need no such margin


def test_regression_eval_reports_error_quantiles_and_a_residual_plot(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, "reg", tmp_path / "runs", epochs=1, steps=2)
    text = spec.read_text().replace('[loss]\nname = "CrossEntropy"', '[loss]\nname = "MSE"')
    text = text.replace('[run]\n', '[run]\ntask = "regression"\n').replace(
        'dataset = "sklearn-digits"\n', 'dataset = "sklearn-digits"\ntarget = "value"\n')
    spec.write_text(text)
    assert cli_run("train", spec).returncode == 0
    run = tmp_path / "runs" / "reg"
    proc = cli_run("evaluate", run, "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "eval-val.json").read_text())
    q = record["abs_error"]
    assert 0 <= q["p50"] <= q["p90"] <= q["p99"] <= q["max"]
    assert q["max"] >= record["metrics"]["val/mae"] - 1e-6
    png = Path(record["figures"]["residuals"])
    assert png == run / "residuals-val.png" and png.read_bytes()[:8] == PNG_MAGIC
    assert "per_class" not in record and "confusion_matrix" not in record
