"""Test-time augmentation (``evaluate --tta``, ``predict --tta``): the identity and the horizontal flip of each image,
their outputs merged the task's way (classification: the mean of the softmax probabilities). The references are
computed by hand from the run's model on flipped inputs, and from plain ``predict`` on flipped PNG files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli
from helpers_commands import train_digits, validation_batch, write_digit_pngs
from PIL import Image, ImageOps

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.task import get_task
from plugtrain.inference import tta_merger

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_torch_thread):
    """A tiny real run on sklearn-digits (16 px)."""
    return train_digits(tmp_path_factory.mktemp("tta"), 1, 12, 32, "--set", "optimizer.lr=1e-2")


def by_hand(run_dir):
    """Per validation sample: the softmax probabilities of the image and of its horizontal flip, and the targets."""
    model, images, targets, _, _ = validation_batch(run_dir)
    with torch.no_grad():
        return model(images).softmax(-1), model(images.flip(-1)).softmax(-1), targets


def test_evaluate_tta_scores_the_mean_probabilities_of_the_image_and_its_flip(digits_run, capsys):
    plain, flipped, targets = by_hand(digits_run)
    mean = (plain + flipped) / 2
    assert cli("evaluate", digits_run, "--tta", "--json") == 0
    record = json.loads((digits_run / "eval-val.json").read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert record["tta"]["views"] == "flip"
    tta = record["tta"]["metrics"]
    accuracy = lambda p: float((p.argmax(-1) == targets).double().mean())  # noqa: E731
    assert record["metrics"]["val/accuracy"] == pytest.approx(accuracy(plain), abs=1e-6)
    assert tta["val/accuracy"] == pytest.approx(accuracy(mean), abs=1e-6)  # counts: 1/359 apart
    # the loss of the merged outputs is the cross-entropy of the mean probabilities (not of either view)
    nll = float(torch.nn.functional.nll_loss(mean.log(), targets))
    assert tta["val/loss"] == pytest.approx(nll, rel=1e-4)
    assert abs(nll - record["metrics"]["val/loss"]) > 1e-3
    assert set(tta) == set(record["metrics"])


def test_predict_tta_is_the_mean_of_predict_on_the_image_and_its_flipped_copy(digits_run, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "mirrored").mkdir()
    paths, _ = write_digit_pngs(tmp_path / "images", 4, validation=True)
    mirrored = []
    for p in paths:
        m = tmp_path / "mirrored" / p.name
        ImageOps.mirror(Image.open(p)).save(m)
        mirrored.append(m)

    def probs(*args):
        capsys.readouterr()
        assert cli("predict", digits_run, *args, "--top-k", "10", "--json") == 0
        out = np.zeros((len(paths), 10))
        for n, r in enumerate(json.loads(capsys.readouterr().out)):
            for t in r["top_k"]:
                out[n, t["index"]] = t["probability"]
        return out

    plain, flipped, tta = probs(*paths), probs(*mirrored), probs(*paths, "--tta")
    np.testing.assert_allclose(tta, (plain + flipped) / 2, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3  # the flip changes what is predicted
    np.testing.assert_allclose(probs(tmp_path / "images", "--tta"), tta, atol=1e-5)  # the batch form (a folder)


def test_tta_needs_a_task_that_merges_and_a_known_view_set(digits_run, tmp_path, cli_run):
    with pytest.raises(PlugtrainError, match="task 'segmentation' does not merge"):
        tta_merger(get_task("segmentation"), "segmentation", "flip")
    paths, _ = write_digit_pngs(tmp_path, 1)
    result = cli_run("predict", digits_run, *paths, "--tta-views", "sideways")
    assert result.returncode == 2 and "invalid choice: 'sideways'" in result.stderr and "Traceback" not in result.stderr


def test_tta_merge_of_each_task_averages_what_it_predicts():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    cls = get_task("classification").tta_merge([a, b])
    torch.testing.assert_close(cls.softmax(-1), (a.softmax(-1) + b.softmax(-1)) / 2)
    multi = get_task("multilabel").tta_merge([a, b])
    torch.testing.assert_close(multi.sigmoid(), (a.sigmoid() + b.sigmoid()) / 2)
    torch.testing.assert_close(get_task("regression").tta_merge([a, b]), (a + b) / 2)
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(get_task("metric_learning").tta_merge([a, 3 * b]),
                               (unit(a, dim=-1) + unit(b, dim=-1)) / 2)
