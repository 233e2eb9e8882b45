"""Issue 12, class 4: nothing is written before the run is known to start, and a data fault found while training
leaves a run that ``--resume auto`` continues once the file is fixed.

The pre-flight reads one real sample of every split through its pipeline and runs one forward of the model, the
loss and every metric before the run directory exists: what fails there is exit 2 with nothing written. A file that
only turns out unreadable mid-epoch (``data.on_error = "raise"``) stops the run with exit 2, a message naming the file
and saying to continue with ``--resume auto``, and ``last.pt`` at the last completed step; fixed and resumed, the run
ends bitwise equal to a run that never met the fault.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, model_state, run_cli, subprocess_env, tiny_spec
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FOLDER_SPEC = """\
[run]
name = "{name}"
output_dir = "{out}"
epochs = 2

[data]
dataset = "imagefolder"
root = "{root}"
image_size = 16
batch_size = 4
num_workers = 0

[backbone]
name = "test_resnet"
in_chans = 3

[loss]
name = "CrossEntropy"

[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9

[loggers]

[trainer]
log_every_steps = 1
grad_accum = {accum}
"""


def png_bytes(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path) -> dict[Path, bytes]:
    """``root/train/<a|b>/<i>.png`` (12 each) and ``root/val/<a|b>/<i>.png`` (3 each); returns every file's bytes."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 12), ("val", 3)):
        for c in ("a", "b"):
            for i in range(n):
                p = root / split / c / f"{i:02d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                files[p] = png_bytes(rng)
                p.write_bytes(files[p])
    return files


def folder_spec(tmp: Path, name: str, root: Path, accum: int = 1) -> Path:
    path = tmp / f"{name}.toml"
    text = FOLDER_SPEC.format(name=name, out=(tmp / "runs").as_posix(), root=root.as_posix(), accum=accum)
    path.write_text(text.replace("[loggers]\n", '[[loggers]]\nname = "csv"\n'))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_a_file_unreadable_mid_epoch_stops_resumably_and_the_fixed_run_equals_an_unbroken_one(tmp_path, capfd,
                                                                                            accum):
    from plugtrain.core.runtime.loader import GlobalBatchSampler

    root = tmp_path / "images"
    files = image_folder(root)
    train = sorted(p for p in files if p.parts[-3] == "train")  # the split's order: classes, then files, sorted
    # the file the run meets first in the second micro-batch of its second optimizer step (after 2 completed steps
    # with grad_accum = 2, after 3 with grad_accum = 1): well inside the first epoch, never the pre-flight's sample 0
    bad = train[GlobalBatchSampler(len(train), 4, seed=0).epoch_order(0)[13]]
    assert bad != train[0]
    reference = folder_spec(tmp_path, "reference", root, accum)
    assert cli("train", reference) == 0

    bad.write_bytes(files[bad][: len(files[bad]) // 2])  # a PNG cut in half: unreadable when it is read
    spec = folder_spec(tmp_path, "faulty", root, accum)
    capfd.readouterr()
    assert cli("train", spec) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("plugtrain: error:") == 1, err
    assert str(bad) in err and "continue with --resume auto" in err, err
    run_dir = tmp_path / "runs" / "faulty"
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    # the last completed step boundary before the fault (batch 3): the unfinished step is redone after the fix
    assert (last["epoch"], last["batch_in_epoch"], last["global_step"]) == (0, 3 - 3 % accum, 3 // accum)
    assert "last.pt holds that step" in err, err  # saved at the fault, not only the last epoch's

    bad.write_bytes(files[bad])  # fixed
    assert cli("train", spec, "--resume", "auto") == 0
    a, b = model_state(run_dir / "checkpoints" / "last.pt"), model_state(tmp_path / "runs" / "reference" /
                                                                          "checkpoints" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_class_weight_that_does_not_fit_the_data_is_refused_before_the_run_directory_exists(tmp_path, capfd):
    """A class weight for 2 classes on the 10 digits: knowable only with the data; the loss's weight is resolved
    against the dataset's classes when the run is built (``weight = "balanced"`` is filled in there too), before
    the pre-flight's forward (once: a RuntimeError at the first step, exit 1, a run directory left behind)."""
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    capfd.readouterr()
    assert cli("train", spec, "--set", "loss.weight=[1.0, 2.0]") == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("plugtrain: error:") == 1, err
    assert "[loss] weight has 2 values but the dataset has 10 classes" in err, err
    assert not (tmp_path / "runs").exists()


MISFIT_LOSS_PLUGIN = """
import torch.nn.functional as F
from plugtrain import Component, hookimpl


def binary_loss():
    return lambda outputs, targets: F.binary_cross_entropy_with_logits(outputs, targets.float())


@hookimpl
def plugtrain_losses():
    return [Component("pt-binary-loss", binary_loss, summary="one logit per sample (declares no fits)")]
"""


def test_a_loss_that_does_not_fit_the_outputs_is_refused_before_the_run_directory_exists(tmp_path, capfd,
                                                                                         monkeypatch):
    """A plugin's loss that declares nothing it fits (so ``check`` lets it through) but takes one logit per sample,
    not 10-class logits: found by the pre-flight's forward (once: a RuntimeError at the first step, exit 1, a run
    directory left behind)."""
    import importlib.metadata

    from helpers_plugins import make_dist

    from plugtrain.core import catalog, hookspecs, registry

    root = make_dist(tmp_path / "plugin", "pt-misfit", {"ptmisfit": "pt_misfit_loss"},
                     {"pt_misfit_loss": MISFIT_LOSS_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    eps = [ep for dist in (importlib.metadata.distribution("plugtrain"),
                           *importlib.metadata.distributions(path=[str(root)]))
           for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
    monkeypatch.setattr(registry, "_registry", registry.Registry(entry_points=eps, disabled=[], warn=lambda _: None))
    monkeypatch.setattr(catalog, "_catalog", None)  # the spec checks ask this registry, not the session's catalog
    monkeypatch.setenv(catalog.NO_CATALOG_ENV, "1")
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    capfd.readouterr()
    assert cli("train", spec, "--set", 'loss.name="pt-binary-loss"') == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("plugtrain: error:") == 1, err
    assert "[loss] 'pt-binary-loss' fails on the model's outputs (4, 10) and the targets (4,) (int64)" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_pipeline_that_cannot_process_the_images_is_refused_before_the_run_directory_exists(tmp_path, capfd,
                                                                                             split):
    """A crop larger than the digits (16 px with upscale = 2): the first sample fails in the pipeline. ``check``
    cannot know it (the pipeline resizes to image_size after the spec's transforms, so a crop larger than
    image_size is right for sources that large); today the validation crop failed after a whole epoch, exit 1."""
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    crop = f'augmentations.{split}=[{{ name = "CenterCrop", height = 40, width = 40 }}]'
    assert cli("check", spec, "--set", crop, "--set", "data.upscale=2") == 0
    capfd.readouterr()
    assert cli("train", spec, "--set", crop, "--set", "data.upscale=2") == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and f"[augmentations.{split}] the {split} pipeline fails" in err, err
    assert not (tmp_path / "runs").exists()


BINARY_METRIC_PLUGIN = """
from plugtrain import Component, hookimpl


def binary_accuracy():
    import torchmetrics

    return torchmetrics.classification.BinaryAccuracy()


@hookimpl
def plugtrain_metrics():
    return [Component("pt-binary-accuracy", binary_accuracy, summary="binary accuracy (declares no fits)")]
"""


@pytest.mark.slow
def test_a_metric_that_does_not_fit_the_outputs_is_refused_before_the_run_directory_exists(tmp_path):
    """A plugin's metric that declares nothing it fits (so ``check`` lets it through) but cannot take 10-class
    logits: the pre-flight updates and computes every metric once (today: an error at the first validation, after a
    whole epoch, exit 1, a run directory left behind)."""
    from helpers_plugins import make_dist

    paths = make_dist(tmp_path / "plugin", "pt-binary", {"ptbinary": "pt_binary"}, {"pt_binary": BINARY_METRIC_PLUGIN})
    spec = tiny_spec(tmp_path, epochs=1, steps=1, extra='\n[[metrics]]\nname = "pt-binary-accuracy"\n')
    env = subprocess_env(PYTHONPATH=str(paths))
    check = run_cli("check", spec, env=env)
    assert check.returncode == 0, check.stderr
    proc = run_cli("train", spec, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "[metrics] metric 'pt-binary-accuracy' fails" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_preflight_changes_nothing_of_the_run(tmp_path):
    """Two runs of the same spec are bitwise equal (the pre-flight draws no random number the run sees, updates no
    batch-norm statistics and leaves the metrics as they were)."""
    a = tiny_spec(tmp_path / "a.toml", name="a", epochs=1, steps=3)
    b = tiny_spec(tmp_path / "b.toml", name="b", epochs=1, steps=3)
    assert cli("train", a) == 0 and cli("train", b) == 0
    sa = torch.load(tmp_path / "runs" / "a" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    sb = torch.load(tmp_path / "runs" / "b" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert sa["history"][0]["val/accuracy"] == sb["history"][0]["val/accuracy"]
