"""``plugtrain predict`` preprocesses an image file exactly as the run's validation samples: the dataset's own reader
(sklearn-digits: an 8x8 original is upscaled by nearest neighbour, as the dataset does), the validation pipeline and
the normalisation. The reference is what evaluate's model gives the same samples in validation; the old decoder
(Pillow, then the pipeline's linear resize) is shown to differ by far more than the tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli, tiny_spec
from helpers_commands import train_digits, validation_batch, write_digit_pngs
from PIL import Image

from plugtrain.core.runtime import build
from plugtrain.core.runtime.loader import AugmentedDataset, Collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SAMPLES = 8


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_torch_thread):
    """A tiny real run on sklearn-digits (8x8 digits upscaled 4x to 32 px, resized to 16 px by the pipeline)."""
    return train_digits(tmp_path_factory.mktemp("predict"), 2, 15, 32, "--set", "optimizer.lr=1e-2")  # ~80% val acc


def validation_reference(run_dir, indices):
    """Evaluate's path: the run rebuilt from its spec, best.pt's model, the validation samples, ModelInput."""
    model, images, _, spec, model_input = validation_batch(run_dir, indices)
    with torch.no_grad():
        return model(images).softmax(-1), model, model_input, spec


def test_predict_gives_what_validation_gives_the_same_samples(digits_run, tmp_path, capsys):
    paths, targets = write_digit_pngs(tmp_path, SAMPLES, validation=True)
    assert Image.open(paths[0]).size == (8, 8)
    want, model, model_input, spec = validation_reference(digits_run, range(SAMPLES))
    capsys.readouterr()
    assert cli("predict", digits_run, *paths, "--top-k", "10", "--json") == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for r, probs in zip(results, want, strict=True):
        got = torch.zeros(10, dtype=torch.float64)
        for t in r["top_k"]:
            got[t["index"]] = t["probability"]
        assert torch.allclose(got, probs.double(), atol=1e-5, rtol=0), (got, probs)
        assert r["index"] == int(probs.argmax()) and r["class"] == str(r["index"])
        assert r["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert r["weights"] == "model" and r["checkpoint"].endswith("best.pt")

    # the test can fail: the old decoder (Pillow, then the pipeline's linear resize 8 -> 16) gives other inputs
    pipeline = build.build_transform(spec, "val", 1)
    old = AugmentedDataset([(np.asarray(Image.open(p).convert("L")), 0) for p in paths], pipeline, 0, "predict")
    old_batch = Collate("raise")([old[(0, i)] for i in range(SAMPLES)])["images"]
    with torch.no_grad():
        old_probs = model(model_input(old_batch)).softmax(-1)
    assert float((old_probs - want).abs().max()) > 1e-2
    assert (want.argmax(-1) == torch.tensor(targets)).float().mean() >= 0.5  # a model that learnt: inputs matter


def test_predict_errors_are_one_line(digits_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli("predict", digits_run, tmp_path / "missing.png") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.png: file not found" in err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert cli("predict", digits_run, tmp_path / "bad.png") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.png" in err and "Traceback" not in err
    p = write_digit_pngs(tmp_path, 1)[0][0]
    assert cli("predict", digits_run, p, "--weights", "ema") == 2
    err = capsys.readouterr().err
    assert "holds no EMA weights" in err and "trainer.ema = true" in err and err.count("\n") == 1
    assert cli("predict", digits_run, p, "--top-k", "0") == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


DATASET_PLUGIN = '''
from plugtrain import Component, hookimpl


def digits_8px(seed: int = 0):
    """scikit-learn's digits at their own 8x8 size, from a plugin that has no read_image."""
    import numpy as np
    from sklearn.datasets import load_digits

    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.splits import ArraySplit, split_indices

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
    tr, va = split_indices(d.target, 0.2, seed)
    return DatasetSplits(train=ArraySplit(images, d.target, tr), val=ArraySplit(images, d.target, va),
                         class_names=[str(i) for i in range(10)], in_chans=1)


@hookimpl
def plugtrain_datasets():
    return [Component("test-digits-8px", digits_8px)]
'''


def test_a_dataset_without_read_image_falls_back_to_the_built_in_decoder(tmp_path, monkeypatch, capsys):
    """A third-party dataset (a real plugin on sys.path) without ``read_image``: files are decoded by
    ``read_image_file`` as they are, so a saved sample predicts as it validates."""
    from helpers_plugins import make_dist

    from plugtrain.core.registry import get_registry, reset_registry

    monkeypatch.syspath_prepend(str(make_dist(tmp_path / "plugin", "pt-test-digits", {"testdigits": "pt_test_digits"},
                                              {"pt_test_digits": DATASET_PLUGIN})))
    reset_registry()
    try:
        assert not hasattr(get_registry().get("datasets", "test-digits-8px").factory, "read_image")
        spec = tiny_spec(tmp_path, "plug", tmp_path / "runs", epochs=1, steps=2)
        spec.write_text(spec.read_text().replace('dataset = "sklearn-digits"', 'dataset = "test-digits-8px"'))
        assert cli("train", spec) == 0
        run_dir = tmp_path / "runs" / "plug"
        paths, _ = write_digit_pngs(tmp_path, 4, validation=True)
        want, *_ = validation_reference(run_dir, range(4))
        capsys.readouterr()
        assert cli("predict", run_dir, *paths, "--top-k", "10", "--json") == 0
        for r, probs in zip(json.loads(capsys.readouterr().out), want, strict=True):
            got = torch.tensor([next(t["probability"] for t in r["top_k"] if t["index"] == k) for k in range(10)])
            assert torch.allclose(got, probs, atol=1e-5, rtol=0)
    finally:
        monkeypatch.undo()
        reset_registry()
