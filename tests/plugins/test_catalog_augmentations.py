"""The augmentation catalog: every albumentations transform by class name, from spec to pixels.

Specs are real TOML files loaded and checked by plugtrain's spec loader; pipelines are built by the runtime
(:func:`plugtrain.core.runtime.build.build_transform`) and applied through the runtime's
:class:`~plugtrain.core.runtime.loader.AugmentedDataset` (seeded per ``(seed, epoch, index)``); runs are the real
``plugtrain`` command line, in this process, on scikit-learn's digits with timm's ``test_resnet``.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from plugtrain.core.registry import get_registry

#: The run every spec here shares: one epoch of two steps on the digits at 16 px, test_resnet; a test's own tables
#: (``[augmentations]``, ``[mixup]``) follow it.
BASE = {
    "run": {"epochs": 1},
    "data": {"dataset": "sklearn-digits", "val_fraction": 0.1, "image_size": 16, "batch_size": 16, "num_workers": 0},
    "backbone": {"name": "test_resnet", "in_chans": 1},
    "loss": {"name": "CrossEntropy"},
    "optimizer": {"name": "AdamW", "lr": 1e-3},
    "trainer": {"max_steps_per_epoch": 2},
}

#: Albumentations' own abstract bases and ReplayCompose (records parameters for replay): not spec transforms.
NOT_TRANSFORMS = {"BaseCompose", "ReplayCompose", "BasicTransform", "DualTransform", "ImageOnlyTransform",
                  "Transform3D"}

#: Arguments for the transforms that have required parameters (or need one to do anything), as a spec writes them.
ARGS = {
    "AtLeastOneBBoxRandomCrop": {"height": 16, "width": 16},
    "CenterCrop": {"height": 16, "width": 16},
    "CenterCrop3D": {"size": [2, 16, 16]},
    "Crop": {"x_max": 16, "y_max": 16},
    "CropAndPad": {"px": 2},
    "CropNonEmptyMaskIfExists": {"height": 16, "width": 16},
    "GridElasticDeform": {"num_grid_xy": [4, 4], "magnitude": 5},
    "LongestMaxSize": {"max_size": 24},
    "Pad3D": {"padding": 2},
    "PadIfNeeded3D": {"min_zyx": [1, 40, 40]},
    "RandomCrop": {"height": 16, "width": 16},
    "RandomCrop3D": {"size": [2, 16, 16]},
    "RandomResizedCrop": {"size": [16, 16]},
    "RandomSizedBBoxSafeCrop": {"height": 16, "width": 16},
    "RandomSizedCrop": {"min_max_height": [16, 24], "size": [16, 16]},
    "Resize": {"height": 16, "width": 16},
    "SmallestMaxSize": {"max_size": 24},
    "TextImage": {"font_path": "/nonexistent/font.ttf"},
}
#: Compositions: their children go in ``transforms`` (OneOrOther takes exactly two).
COMPOSITIONS = {"Compose", "OneOf", "OneOrOther", "RandomOrder", "SelectiveChannelTransform", "Sequential", "SomeOf"}


#: One torch thread (conftest's module fixture): the machine's two cores are shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_spec(tmp_path: Path, body: str, name: str = "aug") -> Path:
    path = tmp_path / f"{name}.toml"
    run = {"name": name, "output_dir": (tmp_path / "runs").as_posix(), **BASE["run"]}
    path.write_text(tomli_w.dumps({**BASE, "run": run}) + "\n" + body, encoding="utf-8")
    return path


def cli(*args: object) -> int:
    from plugtrain.entrypoints.cli import main

    return main([str(a) for a in args])


def toml_value(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def inline(name: str, params: dict) -> str:
    return "{ " + ", ".join([f'name = "{name}"'] + [f"{k} = {toml_value(v)}" for k, v in params.items()]) + " }"


def albumentations_classes() -> dict[str, type]:
    """Every transform or composition class that the ``albumentations`` package exports, found independently."""
    import albumentations as A
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    out = {}
    for name in dir(A):
        obj = getattr(A, name)
        if inspect.isclass(obj) and issubclass(obj, (BasicTransform, BaseCompose)):
            out[name] = obj
    return out


# -- the catalog -------------------------------------------------------------------------------------------------------
def builtin_names(reg) -> set[str]:
    """The augmentations of plugtrain's own albumentations plugin (an installed extra adds its own, e.g. MONAI's)."""
    return {n for n in reg.names("augmentations") if reg.get("augmentations", n).plugin == "augmentations"}


def test_every_albumentations_transform_is_listed(capsys):
    classes = albumentations_classes()
    reg = get_registry()
    listed = builtin_names(reg)
    assert listed == set(classes) - NOT_TRANSFORMS
    assert len(listed) > 100
    for name in listed:  # the class itself is the factory: its parameters are the spec's
        assert reg.get("augmentations", name).factory is classes[name]
    assert {"HorizontalFlip", "OneOf", "SomeOf", "Sequential", "CoarseDropout", "Erasing", "RandomResizedCrop",
            "Affine", "NoOp", "D4"} <= listed
    params = {p.name: p for p in reg.get("augmentations", "RandomResizedCrop").params}
    assert params["size"].required and "height" not in params and params["p"].default == 1.0
    assert cli("list", "augmentations", "--json") == 0
    names = set(re.findall(r'"name": "([^"]+)"', capsys.readouterr().out))
    assert listed <= names


def test_every_listed_transform_is_accepted_by_the_checker_and_runs_on_an_image(tmp_path):
    """Each transform in a spec (the checker validates its arguments), built by the runtime, applied to an image.
    Those flagged as unusable on images alone (3D volumes, bounding boxes, masks) fail or leave the image as is."""
    import albumentations as A

    from plugtrain.core.runtime.build import build_augmentation
    from plugtrain.core.spec import load_spec

    reg = get_registry()
    names = sorted(builtin_names(reg))
    entries = []
    for name in names:
        params = dict(ARGS.get(name, {}))
        if name in COMPOSITIONS:
            children = [inline("HorizontalFlip", {"p": 1.0}), inline("Transpose", {"p": 1.0})]
            entries.append("  { " + f'name = "{name}", ' + "".join(f"{k} = {toml_value(v)}, " for k, v in
                                                                     params.items())
                           + "transforms = [" + ", ".join(children if name == "OneOrOther" else children[:1])
                           + "] },")
        else:
            entries.append("  " + inline(name, params) + ",")
    spec = load_spec(write_spec(tmp_path, "[augmentations]\ntrain = [\n" + "\n".join(entries) + "\n]\n"))
    assert [a.name for a in spec.augmentations.train] == names

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    failed, unchanged = set(), set()
    for a in spec.augmentations.train:
        transform = build_augmentation(a, "augmentations.train")
        assert type(transform).__name__ == a.name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = A.Compose([transform], seed=0)(image=image.copy())["image"]
        except Exception:  # noqa: BLE001
            failed.add(a.name)
            continue
        if a.name == "ToTensorV2":  # CHW torch tensor; plugtrain does this itself (after Normalize)
            assert tuple(out.shape) == (3, 32, 32) and "not needed" in reg.get("augmentations", a.name).one_line
            continue
        assert isinstance(out, np.ndarray) and out.ndim == 3 and out.shape[2] == 3, a.name
        if out.shape == image.shape and np.array_equal(out, image):
            unchanged.add(a.name)
    flagged = {n for n in names if "not usable" in reg.get("augmentations", n).one_line}
    assert failed <= flagged, f"fail on an image but are not flagged: {sorted(failed - flagged)}"
    assert flagged <= failed | unchanged, f"flagged but work on images: {sorted(flagged - failed - unchanged)}"
    assert {"BBoxSafeRandomCrop", "CubicSymmetry", "CenterCrop3D"} <= failed
    assert len(names) - len(flagged) > 100


# -- compositions ------------------------------------------------------------------------------------------------------
def _outputs(tmp_path: Path, train: str, n: int = 64, name: str = "comp") -> list[np.ndarray]:
    """The augmented versions of one image at ``n`` sample keys, through the runtime's pipeline and dataset."""
    from plugtrain.core.runtime.build import build_transform
    from plugtrain.core.runtime.loader import AugmentedDataset
    from plugtrain.core.spec import load_spec

    body = f"[augmentations]\nresize = false\nnormalize = false\ntrain = [\n{train}\n]\n"
    spec = load_spec(write_spec(tmp_path, body, name))
    transform = build_transform(spec, "train", 1)
    image = np.arange(36, dtype=np.uint8).reshape(6, 6, 1) * 7
    data = AugmentedDataset([(image, 0)] * n, transform, seed=0, name="train", to_tensor=False)
    return [data[(0, i)][0] for i in range(n)]


def _kind(out: np.ndarray, image: np.ndarray, candidates: dict[str, np.ndarray]) -> str:
    hits = [k for k, c in candidates.items() if np.array_equal(out, c)]
    assert len(hits) == 1, f"unexpected output {out[..., 0]}"
    return hits[0]


def test_nested_compositions_with_their_own_p(tmp_path):
    """OneOf > Sequential > SomeOf, three levels deep: every output is one of the legal outcomes, each occurs."""
    image = np.arange(36, dtype=np.uint8).reshape(6, 6, 1) * 7
    h = image[:, ::-1]
    candidates = {"identity": image, "h+v": h[::-1], "h+t": h.transpose(1, 0, 2)}
    nested = """  { name = "OneOf", p = 1.0, transforms = [
    { name = "Sequential", p = 1.0, transforms = [
      { name = "HorizontalFlip", p = 1.0 },
      { name = "SomeOf", n = 1, replace = false, p = 1.0, transforms = [
        { name = "VerticalFlip", p = 1.0 },
        { name = "Transpose", p = 1.0 },
      ] },
    ] },
    { name = "NoOp", p = 1.0 },
  ] },"""
    kinds = [_kind(o, image, candidates) for o in _outputs(tmp_path, nested, name="nested")]
    assert set(kinds) == set(candidates), kinds
    # the same pipeline with the outer OneOf's p = 0 never changes the image
    off = nested.replace('{ name = "OneOf", p = 1.0', '{ name = "OneOf", p = 0.0', 1)
    assert all(np.array_equal(o, image) for o in _outputs(tmp_path, off, n=16, name="off"))
    # an inner Sequential's own p = 0.5 applies it to about half the samples
    half = '  { name = "Sequential", p = 0.5, transforms = [ { name = "HorizontalFlip", p = 1.0 } ] },'
    flipped = [np.array_equal(o, h) for o in _outputs(tmp_path, half, name="half")]
    assert 16 <= sum(flipped) <= 48 and all(f or np.array_equal(o, image) for f, o in
                                            zip(flipped, _outputs(tmp_path, half, name="half2"), strict=True))


def test_same_key_same_augmentation(tmp_path):
    body = '  { name = "Affine", rotate = [-30, 30], translate_percent = [-0.2, 0.2], p = 1.0 },'
    a, b = _outputs(tmp_path, body, n=8, name="a"), _outputs(tmp_path, body, n=8, name="b")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({x.tobytes() for x in a}) > 4


# -- train / val pipelines, resize and normalize ---------------------------------------------------------------------
def test_train_and_val_pipelines_resize_and_normalize(tmp_path):
    import torch

    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    body = """[augmentations]
train = [{ name = "HorizontalFlip", p = 1.0 }]
val = [{ name = "VerticalFlip", p = 1.0 }]
"""
    path = write_spec(tmp_path, body)
    built = build_run(load_spec(path), DistEnv(), purpose="eval")
    names = [type(t).__name__ for t in built.train_transform.transforms]
    assert names == ["HorizontalFlip", "Resize"]  # normalisation is per batch, on the device
    assert [type(t).__name__ for t in built.val_transform.transforms] == ["VerticalFlip", "Resize"]
    raw, _ = built.splits.val[0]  # 32x32x1 uint8 (digits upscaled 4x)
    x, _ = built.val_data[(0, 0)]
    assert tuple(x.shape) == (1, 16, 16) and x.dtype == torch.uint8  # raw pixels up to the collate
    import albumentations as A

    expected = A.Resize(16, 16)(image=raw[::-1].copy())["image"]
    np.testing.assert_array_equal(x.numpy()[0], expected[..., 0])  # flipped, resized
    model_input = ModelInput.for_spec(built.spec, built.in_chans, torch.device("cpu"))
    batch = model_input(x[None])
    assert batch.dtype == torch.float32
    np.testing.assert_allclose(batch.numpy()[0, 0], (expected[..., 0] / 255.0 - 0.5) / 0.5, atol=1e-5)  # scaled
    t, _ = built.train_data[(0, 0)]
    t = model_input(t[None])
    assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0

    built = build_run(load_spec(path, ["augmentations.resize=false", "augmentations.normalize=false"]), DistEnv(),
                      purpose="eval")
    assert [type(t).__name__ for t in built.train_transform.transforms] == ["HorizontalFlip"]
    assert [type(t).__name__ for t in built.val_transform.transforms] == ["VerticalFlip"]
    v, _ = built.val_data[(0, 0)]
    assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.shape == (32, 32, 1)
    np.testing.assert_array_equal(v, raw[::-1])
    t, _ = built.train_data[(0, 0)]
    np.testing.assert_array_equal(t, built.splits.train[0][0][:, ::-1])
    images = Collate()([built.val_data[(0, 0)]])["images"]  # the model gets the raw values as float
    x = ModelInput.for_spec(built.spec, built.in_chans, torch.device("cpu"))(images)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(x.numpy()[0, 0], raw[::-1, :, 0].astype(np.float32))


def test_no_pipeline_when_there_is_nothing_to_do(tmp_path):
    """No transforms and no resize: no pipeline at all (nothing seeded or called per sample); the sample is the
    decoded image as a uint8 CHW tensor, normalised per batch like any other."""
    import torch

    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    body = '[augmentations]\nresize = false\nmean = [0.25]\nstd = [0.125]\ntrain = [{ name = "HorizontalFlip" }]\n'
    built = build_run(load_spec(write_spec(tmp_path, body, "plain")), DistEnv(), purpose="eval")
    assert built.val_transform is None and built.train_transform is not None
    raw, _ = built.splits.val[3]
    x, _ = built.val_data[(5, 3)]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 32, 32)
    np.testing.assert_array_equal(x.numpy()[0], raw[..., 0])
    y = ModelInput.for_spec(built.spec, 1, torch.device("cpu"))(x[None])
    np.testing.assert_allclose(y.numpy()[0, 0], (raw[..., 0] / 255.0 - 0.25) / 0.125, rtol=1e-6, atol=1e-5)


# -- albumentations 1.x names --------------------------------------------------------------------------------------
def test_albumentations_1x_names_and_arguments_name_their_replacement(tmp_path, capsys):
    body = """[augmentations]
train = [
  { name = "Flip", p = 0.5 },
  { name = "OneOf", p = 0.5, transforms = [
    { name = "RandomResizedCrop", height = 16, width = 16 },
    { name = "JpegCompression", quality_lower = 50 },
  ] },
  { name = "GaussNoise", var_limit = [10.0, 50.0] },
  { name = "HorizontalFlip", always_apply = true },
  { name = "Cutout", num_holes = 4 },
]
"""
    path = write_spec(tmp_path, body, "old")
    assert cli("check", path) == 2
    err = capsys.readouterr().err
    lines = path.read_text().splitlines()
    expected = {
        '"Flip"': "use HorizontalFlip, VerticalFlip, or D4",
        '"RandomResizedCrop"': "replaced height and width with size = [height, width]",
        '"JpegCompression"': "use ImageCompression",
        "var_limit": "std_range",
        "always_apply": "write p = 1.0",
        '"Cutout"': "use CoarseDropout",
    }
    for needle, hint in expected.items():
        line = next(i for i, text in enumerate(lines, 1) if needle in text)
        assert re.search(rf"old\.toml:{line}:\d+: .*{re.escape(hint)}", err), f"line {line}: {hint!r}\n{err}"
    assert "Traceback" not in err
    # train refuses the same spec before it creates anything
    assert cli("train", path) == 2
    assert "HorizontalFlip" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# -- a real run: nested compositions, random erasing, mixup / cutmix, samples ----------------------------------------
def test_run_with_compositions_erasing_mixup_and_samples(tmp_path, capsys):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    body = """[augmentations]
save_samples = 6
train = [
  { name = "SomeOf", n = 2, p = 0.9, transforms = [
    { name = "Sequential", p = 1.0, transforms = [
      { name = "Affine", rotate = [-10, 10], p = 1.0 },
      { name = "OneOf", p = 0.8, transforms = [
        { name = "GaussianBlur", blur_limit = [3, 3] },
        { name = "GaussNoise", std_range = [0.05, 0.1] },
      ] },
    ] },
    { name = "RandomBrightnessContrast", brightness_limit = 0.2, contrast_limit = 0.2 },
    { name = "Sharpen" },
  ] },
  { name = "CoarseDropout", num_holes_range = [1, 2], hole_height_range = [3, 6], hole_width_range = [3, 6], p = 0.5 },
  { name = "Erasing", scale = [0.02, 0.2], p = 0.5 },
]
val = [{ name = "CenterCrop", height = 28, width = 28 }]

[mixup]
mixup_alpha = 0.4
cutmix_alpha = 1.0
prob = 1.0
switch_prob = 0.5
"""
    path = write_spec(tmp_path, body, "mixed")
    assert cli("train", path) == 0, capsys.readouterr()
    run_dir = tmp_path / "runs" / "mixed"
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train/loss"]))
    # the samples grid: 6 tiles of 16x16 in 3 columns x 2 rows with 2-pixel gaps, in the run dir and TensorBoard
    grid = np.asarray(Image.open(run_dir / "samples-train.png").convert("RGB"))
    assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)
    tiles = [grid[2 + r * 18:18 + r * 18, 2 + c * 18:18 + c * 18] for r in range(2) for c in range(3)]
    assert len({t.tobytes() for t in tiles}) == 6 and all(t.std() > 0 for t in tiles)
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("samples/train")
    assert (event.height, event.width) == grid.shape[:2]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")), grid)


def test_mixup_section_builds_timm_mixup_on_the_batches(tmp_path):
    import torch
    from timm.data import Mixup

    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    body = "[mixup]\nmixup_alpha = 0.4\ncutmix_alpha = 0.0\nprob = 1.0\nlabel_smoothing = 0.0\n"
    built = build_run(load_spec(write_spec(tmp_path, body, "mix")), DistEnv())
    assert isinstance(built.mixup, Mixup)
    assert (built.mixup.mixup_alpha, built.mixup.cutmix_alpha, built.mixup.mix_prob) == (0.4, 0.0, 1.0)
    batch = Collate()([built.train_data[(0, i)] for i in range(16)])
    normalised = ModelInput.for_spec(built.spec, built.in_chans, torch.device("cpu"))(batch["images"])
    torch.manual_seed(0)
    images, targets = built.mixup(normalised.clone(), batch["targets"].clone())  # as the trainer: after normalising
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(1), torch.ones(16))
    assert ((targets > 0).sum(1) >= 1).all() and (targets.max(1).values < 1).any()  # soft, mixed labels
    assert not torch.equal(images, normalised)


# -- dry run ---------------------------------------------------------------------------------------------------------
def test_dry_run_prints_shapes_and_parameters_and_writes_nothing(tmp_path, capsys):
    import timm

    body = '[augmentations]\nsave_samples = 4\ntrain = [{ name = "Affine", rotate = [-10, 10], p = 1.0 }]\n'
    path = write_spec(tmp_path, body, "dry")
    assert cli("train", path, "--dry-run") == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in timm.create_model("test_resnet", in_chans=1, num_classes=10).parameters())
    assert "images (16, 1, 16, 16)" in out and "targets (16,)" in out
    assert f"{params:,} parameters ({params:,} trainable)" in out and "output (16, 10)" in out
    samples = Path(re.search(r"augmented samples: (\S+)", out).group(1))
    assert samples.name == "samples-train.png" and samples.is_file()
    assert not (tmp_path / "runs").exists()
    assert tmp_path not in samples.parents
    shutil.rmtree(samples.parent)
