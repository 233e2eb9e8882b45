"""N-D samples in the core (issue 27): ``data.image_size`` as a spatial size of 1, 2 or 3 numbers, components'
declared ``spatial_dims`` checked against it where they are named, and the extras' names answered with the extra
to install when it is missing. Nothing here needs the plugtrain-monai extra."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import tiny_spec


def _spec(tmp_path, image_size: str, **replace: str):
    path = tiny_spec(tmp_path)
    text = path.read_text().replace("image_size = 16", f"image_size = {image_size}")
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.parametrize("value, accepted", [("[16, 16, 16]", True), ("[64]", True), ("[12, 20]", True),
                                             ("16", True), ("[0, 3]", False), ("[1, 2, 3, 4]", False),
                                             ("[]", False), ("[8.5]", False)])
def test_image_size_is_an_int_or_a_list_of_one_to_three_positive_ints(value, accepted):
    import attrs

    from plugtrain.core.spec.model import DataSection, spatial_rank, spatial_size

    field = attrs.fields(DataSection).image_size
    parsed = eval(value)  # noqa: S307 - the test's own literals
    if accepted:
        field.validator(None, field, parsed)
        assert spatial_size(parsed) == ((parsed, parsed) if isinstance(parsed, int) else tuple(parsed))
        assert spatial_rank(parsed) == (2 if isinstance(parsed, int) else len(parsed))
    else:
        with pytest.raises(ValueError, match="list of 1, 2 or 3 positive ints"):
            field.validator(None, field, parsed)


def test_check_refuses_2d_components_on_volumes_where_they_are_named(tmp_path, cli_run):
    spec = _spec(tmp_path, "[16, 16, 16]")
    proc = cli_run("check", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = spec.read_text().splitlines()
    backbone_line = next(i for i, line in enumerate(lines, 1) if line.startswith("name = \"test_efficientnet\""))
    aug_line = next(i for i, line in enumerate(lines, 1) if line.startswith("train = [{ name = \"Affine\""))
    assert re.search(rf"{re.escape(str(spec))}:{backbone_line}:\d+: backbone.name: backbone 'test_efficientnet' "
                     r"takes 2-D images, but data.image_size = \[16, 16, 16\] gives 3-D volumes", proc.stderr)
    assert re.search(rf"{re.escape(str(spec))}:{aug_line}:\d+: augmentations.train\[0\].name: transform 'Affine' "
                     "takes 2-D images", proc.stderr)
    assert proc.stderr.count(": backbone.name:") == 1  # one message per misplaced component
    assert cli_run("check", _spec(tmp_path, "[16, 16]")).returncode == 0  # the same components on 2-D images


def test_training_refuses_mismatched_ranks_before_writing_a_run_dir(tmp_path, cli_run):
    spec = _spec(tmp_path, "[16]", **{'train = [{ name = "Affine"': 'train = [] #'})
    proc = cli_run("train", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "backbone 'test_efficientnet' takes 2-D images, but data.image_size = [16] gives 1-D signals" in proc.stderr
    assert not (tmp_path / "runs" / "tiny").exists()


def test_a_missing_extras_components_name_the_extra_to_install(tmp_path, cli_run, monkeypatch):
    from plugtrain.core.registry import reset_registry

    spec = _spec(tmp_path, "[12, 12, 12]", **{'name = "test_efficientnet"': 'name = "monai-resnet10"',
                                              'name = "Affine"': 'name = "monai-RandFlip"'})
    monkeypatch.setenv("PLUGTRAIN_DISABLE_PLUGINS", "monai")  # as if the extra were not installed
    reset_registry()
    try:
        proc = cli_run("check", spec)
    finally:
        monkeypatch.delenv("PLUGTRAIN_DISABLE_PLUGINS")
        reset_registry()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for what in ("backbone.name: unknown backbone 'monai-resnet10': a MONAI backbone",
                 "augmentations.train[0].name: unknown augmentation 'monai-RandFlip': a MONAI transform"):
        assert what in proc.stderr
    assert proc.stderr.count("pip install ./extras/plugtrain-monai") == 2


def test_n_d_samples_become_channel_first_tensors_and_normalise_per_channel():
    import torch

    from plugtrain.core.runtime.loader import AugmentedDataset, Collate
    from plugtrain.core.runtime.step import ModelInput

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (5, 6, 7), dtype=np.uint8)  # DxHxW, no channel axis
    signal = rng.random((9, 2), dtype=np.float32)  # LxC
    v = AugmentedDataset([(volume, 0)], None, 0, spatial_dims=3)[(0, 0)][0]
    s = AugmentedDataset([(signal, 1)], None, 0, spatial_dims=1)[(0, 0)][0]
    assert v.shape == (1, 5, 6, 7) and v.dtype == torch.uint8 and torch.equal(v[0], torch.from_numpy(volume))
    assert s.shape == (2, 9) and torch.equal(s, torch.from_numpy(signal).T)
    batch = Collate()([(s, 0), (s, 1)])["images"]
    out = ModelInput([0.5, 0.25], [0.5, 0.5], torch.device("cpu"), scale=1.0)(batch)
    assert out.shape == (2, 2, 9)
    assert torch.allclose(out[:, 1], (batch[:, 1] - 0.25) / 0.5) and torch.allclose(out[:, 0], (batch[:, 0] - 0.5) / 0.5)
