"""``sklearn-digits``: scikit-learn's 1,797 8x8 handwritten digits, shipped in its wheel (no files)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from plugtrain.plugins.datasets.common import check_fraction, error, param

#: The side of scikit-learn's digit images.
SIDE = 8


def _check_upscale(upscale: Any) -> None:
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise error(f"sklearn-digits: upscale must be a positive integer, not {upscale!r}")


def sklearn_digits(val_fraction: float = 0.2, upscale: int = 4, target: Literal["class", "value"] = "class",
                   seed: int = 0):
    """scikit-learn's handwritten digits: 1,797 real 8x8 grayscale images of 10 classes, shipped in the wheel.

    Images are scaled from 0..16 to 0..255 and upscaled ``upscale`` times (nearest) so that CNNs have room to work.
    ``val_fraction`` is held out for validation, stratified, with the run's seed. ``target = "value"`` makes it a
    regression data set: the target is the digit's value as a float (one output, named ``digit``).
    """
    import numpy as np
    from sklearn.datasets import load_digits

    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.splits import ArraySplit, split_indices

    check_fraction(val_fraction, "sklearn-digits")
    _check_upscale(upscale)
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    images = np.ascontiguousarray(images[..., None])  # N x H x W x 1
    targets = digits.target.astype(np.int64)
    if target not in ("class", "value"):
        raise error(f"sklearn-digits: target must be 'class' or 'value', not {target!r}")
    tr, va = split_indices(targets, val_fraction, seed)
    train = ArraySplit(images, targets, tr, source="sklearn digits")
    val = ArraySplit(images, targets, va, source="sklearn digits")
    if target == "value":
        return DatasetSplits(train=_FloatTargets(train), val=_FloatTargets(val), class_names=["digit"], in_chans=1,
                             task="regression")
    return DatasetSplits(train=train, val=val, class_names=[str(d) for d in range(10)], in_chans=1,
                         task="classification")


class _FloatTargets:
    """A split whose integer targets are served as floats (regression on the digit's value)."""

    def __init__(self, split: Any) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, float]:
        image, value = self.split[i]
        return image, float(value)

    @property
    def targets(self) -> list[float]:
        return [float(v) for v in self.split.targets]


def read_image(path: str | os.PathLike[str], *, in_chans: int = 1, params: Mapping[str, Any] | None = None) -> Any:
    """One image file as a digit sample comes out: one channel, brought to the dataset's size (8 x ``upscale``) by
    nearest-neighbour resampling, as the dataset upscales its 8x8 images (a saved sample comes back unchanged)."""
    import numpy as np

    from plugtrain.plugins.datasets.decode import read_image_file
    from plugtrain.plugins.datasets.splits import convert_channels

    upscale = param(sklearn_digits, params, "upscale")
    _check_upscale(upscale)
    image = read_image_file(path, 1)
    size = SIDE * upscale
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        rows = np.arange(size) * h // size
        cols = np.arange(size) * w // size
        image = np.ascontiguousarray(image[rows][:, cols])
    return convert_channels(image, in_chans)


sklearn_digits.read_image = read_image
