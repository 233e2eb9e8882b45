"""``segmentation-pairs``: images and their masks, from two parallel folders or a CSV of image and mask paths.

A mask is a PNG (or any single-channel image PIL reads) whose pixel values are class indices: a palette PNG
(mode ``P``: the palette indices are the classes, the colours are only for viewers) or a grey one (mode ``L`` /
``I;16``). ``ignore_index`` (default 255) marks pixels no loss or metric counts; any other value outside
``0 .. len(class_names) - 1`` is a sample error naming the file. A sample is ``(HxWxC uint8 image, HxW uint8/int64
mask)`` of the same height and width.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Interval

from .losses import IGNORE_INDEX

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def read_image(path: str, *, in_chans: int, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """One image file as an ``HxWxC`` uint8 array with ``in_chans`` channels (RGB or grey), as the dataset reads it."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise _error(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _error(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return a[..., None] if a.ndim == 2 else a


def read_mask(path: str, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """A mask file as an ``HxW`` array of class indices; raises ``SampleError`` for a mask that is not one."""
    from PIL import Image, UnidentifiedImageError

    from plugtrain.core.data import SampleError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L", "I;16", "I", "1"):
                raise SampleError(path, f"a mask must be a palette or grey image of class indices, not mode {mode} "
                                        f"(colour masks: map each colour to its class index first)")
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise SampleError(path, f"not a readable mask ({type(exc).__name__}: {exc})") from None
    a = a.astype(np.uint8 if a.max(initial=0) < 256 else np.int64)
    bad = (a >= num_classes) & (a != (ignore_index if ignore_index is not None else -1))
    if bad.any():
        raise SampleError(path, f"mask value {int(a[bad].max())} is not a class index (0..{num_classes - 1}"
                                + (f", or ignore_index {ignore_index}" if ignore_index is not None else "") + ")")
    return a


class PairSplit:
    """A split of ``(image path, mask path)`` pairs, decoded in ``__getitem__`` (so in DataLoader workers)."""

    def __init__(self, pairs: list[tuple[str, str]], num_classes: int, in_chans: int, ignore_index: int | None):
        self.pairs, self.num_classes, self.in_chans, self.ignore_index = pairs, num_classes, in_chans, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from plugtrain.core.data import SampleError
        from plugtrain.core.errors import PlugtrainError

        image_path, mask_path = self.pairs[index]
        try:
            image = read_image(image_path, in_chans=self.in_chans)
        except PlugtrainError as exc:
            raise SampleError(image_path, str(exc).split(": ", 1)[-1]) from None
        mask = read_mask(mask_path, self.num_classes, self.ignore_index)
        if mask.shape != image.shape[:2]:
            raise SampleError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                                         f"{image.shape[1]}x{image.shape[0]}")
        return image, mask


def _folder_pairs(root: str, images_dir: str, masks_dir: str) -> list[tuple[str, str]]:
    img_root, mask_root = os.path.join(root, images_dir), os.path.join(root, masks_dir)
    for d, what in ((img_root, "images"), (mask_root, "masks")):
        if not os.path.isdir(d):
            raise _error(f"dataset segmentation-pairs: the {what} folder '{d}' does not exist (a split is a folder "
                         f"with '{images_dir}/' and '{masks_dir}/' of files with the same names, or a .csv of "
                         f"image,mask paths)")
    masks = {Path(n).stem: os.path.join(mask_root, n) for n in sorted(os.listdir(mask_root))
             if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")}
    pairs, missing = [], []
    for n in sorted(os.listdir(img_root)):
        if n.startswith(".") or not n.lower().endswith(IMAGE_EXTENSIONS):
            continue
        m = masks.get(Path(n).stem)
        if m is None:
            missing.append(n)
        else:
            pairs.append((os.path.join(img_root, n), m))
    if missing:
        raise _error(f"dataset segmentation-pairs: {len(missing)} image(s) in '{img_root}' have no mask of the same "
                     f"name in '{mask_root}', e.g. {missing[0]!r}")
    return pairs


def _csv_pairs(path: str) -> list[tuple[str, str]]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "image" not in cols or "mask" not in cols:
            raise _error(f"{path}:1: a segmentation CSV needs the columns image,mask (it has {', '.join(cols)})")
        pairs = []
        for line, row in enumerate(reader, start=2):
            image, mask = (row.get("image") or "").strip(), (row.get("mask") or "").strip()
            if not image or not mask:
                raise _error(f"{path}:{line}: a row needs both an image and a mask path")
            pairs.append((os.path.join(base, image), os.path.join(base, mask)))
    return pairs


def pairs_of(source: str, images_dir: str, masks_dir: str, what: str) -> list[tuple[str, str]]:
    """The pairs of one split's ``source``: a folder of ``images_dir``/``masks_dir``, or a CSV file."""
    source = os.path.expanduser(source)
    if not os.path.exists(source):
        raise _error(f"dataset segmentation-pairs: {what} '{source}' does not exist")
    pairs = _csv_pairs(source) if os.path.isfile(source) else _folder_pairs(source, images_dir, masks_dir)
    if not pairs:
        raise _error(f"dataset segmentation-pairs: {what} '{source}' holds no image and mask pairs")
    return pairs


def segmentation_pairs(
    train: str,
    class_names: list[str],
    val: str | None = None,
    test: str | None = None,
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2,
    images_dir: str = "images",
    masks_dir: str = "masks",
    channels: Literal[1, 3] = 3,
    ignore_index: int | None = IGNORE_INDEX,
    seed: int = 0,
    on_error: str = "raise",
):
    """Image + mask pairs. ``train``, ``val``, ``test``: each a folder with ``images/`` and ``masks/`` whose files
    pair by name (``a.jpg`` with ``a.png``), or a CSV with the columns ``image,mask`` (paths relative to the CSV).
    Without ``val``, ``val_fraction`` of ``train`` is held out with the run's seed. ``class_names``: one name per
    mask value, background (0) first. ``channels``: 3 (RGB) or 1 (grey). ``ignore_index``: the mask value no loss or
    metric counts (``None``: every value must be a class).
    """
    from plugtrain.core.data import DatasetSplits

    if len(class_names) < 2:
        raise _error("dataset segmentation-pairs: class_names needs at least two names (background first)")
    if ignore_index is not None and 0 <= ignore_index < len(class_names):
        raise _error(f"dataset segmentation-pairs: ignore_index {ignore_index} is the class {class_names[ignore_index]!r}"
                     f"; pick a value outside 0..{len(class_names) - 1} (255 by convention)")
    train_pairs = pairs_of(train, images_dir, masks_dir, "train")
    if val is None:
        order = np.random.default_rng(seed).permutation(len(train_pairs))
        n_val = max(1, round(len(train_pairs) * val_fraction))
        if n_val >= len(train_pairs):
            raise _error(f"dataset segmentation-pairs: {len(train_pairs)} pair(s) in train are too few to hold out "
                         f"val_fraction = {val_fraction}")
        val_pairs = [train_pairs[i] for i in sorted(order[:n_val])]
        train_pairs = [train_pairs[i] for i in sorted(order[n_val:])]
    else:
        val_pairs = pairs_of(val, images_dir, masks_dir, "val")
    test_pairs = pairs_of(test, images_dir, masks_dir, "test") if test is not None else None
    n = len(class_names)

    def split(p):
        return PairSplit(p, n, channels, ignore_index)

    return DatasetSplits(train=split(train_pairs), val=split(val_pairs),
                         test=split(test_pairs) if test_pairs is not None else None,
                         class_names=list(class_names), in_chans=channels, task="segmentation")


segmentation_pairs.read_image = read_image  # type: ignore[attr-defined]
