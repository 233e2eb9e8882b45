"""``segmentation-pairs``: images and their masks, from two parallel folders or a CSV of image and mask paths.

A mask is a PNG (or any single-channel image PIL reads) whose pixel values are class indices: a palette PNG
(mode ``P``: the palette indices are the classes, the colours are only for viewers) or a grey one (mode ``L`` /
``I;16``). ``ignore_index`` (default 255) marks pixels no loss or metric counts; any other value outside
``0 .. len(class_names) - 1`` is a sample error naming the file. A sample is ``(HxWxC uint8 image, HxW uint8/int64
mask)`` of the same height and width.

``cache = "memory" | "disk"`` keeps every decoded image AND mask in plugtrain's decoded-sample cache
(:mod:`plugtrain.plugins.datasets.cache`: two caches per split, ``segmentation-pairs-<split>-images`` and
``-masks``), so later epochs decode nothing. ``shards = DIR`` reads the folder ``plugtrain shards`` writes of a
segmentation spec (per sample an image member and a ``mask.png`` member) instead of files: the very samples, in the
very order, of the source.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Interval

from plugtrain.core.files import IMAGE_EXTENSIONS

from .losses import IGNORE_INDEX
from .task import MASK_MEMBER


def _error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def _open_image(source: str | bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)


def decode_image(source: str | bytes, name: str, in_chans: int) -> np.ndarray:
    """An image (a path, or a file's bytes) as an ``HxWxC`` uint8 array; raises ``SampleError`` naming ``name``."""
    from PIL import UnidentifiedImageError

    from plugtrain.core.data import SampleError

    try:
        with _open_image(source) as im:
            a = np.asarray(im.convert("L" if in_chans == 1 else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise SampleError(name, f"not a readable image ({type(exc).__name__}: {exc})") from None
    return a[..., None] if a.ndim == 2 else a


def read_image(path: str, *, in_chans: int, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """One image file as an ``HxWxC`` uint8 array with ``in_chans`` channels (RGB or grey), as the dataset reads it."""
    from plugtrain.core.data import SampleError

    if not os.path.isfile(path):
        raise _error(f"{path}: not a file")
    try:
        return decode_image(path, path, in_chans)
    except SampleError as exc:
        raise _error(f"{path}: {exc.reason}") from None


def read_mask(source: str | bytes, num_classes: int, ignore_index: int | None, name: str | None = None) -> np.ndarray:
    """A mask (a path, or a file's bytes) as an ``HxW`` array of class indices; raises ``SampleError`` (naming
    ``name``, default the path) for a mask that is not one."""
    from PIL import UnidentifiedImageError

    from plugtrain.core.data import SampleError

    path = name if name is not None else str(source)
    try:
        with _open_image(source) as im:
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
    """A split of ``(image path, mask path)`` pairs, decoded in ``__getitem__`` (so in DataLoader workers).

    ``image_cache`` / ``mask_cache``: the split's decoded-sample caches (``cache = "memory" | "disk"``), or None. A
    sample is written to them only once it is whole (image and mask readable, the mask a valid one of the image's
    size), so a cache never serves what a fresh decode would refuse."""

    image_cache: Any = None
    mask_cache: Any = None

    def __init__(self, pairs: list[Any], num_classes: int, in_chans: int, ignore_index: int | None):
        self.pairs, self.num_classes, self.in_chans, self.ignore_index = pairs, num_classes, in_chans, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def source(self, i: int, which: str) -> tuple[str | bytes, str]:
        """``(path or bytes, name for messages)`` of sample ``i``'s ``"image"`` or ``"mask"``."""
        path = self.pairs[i][0 if which == "image" else 1]
        return path, path

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from plugtrain.core.data import SampleError

        image = self.image_cache.read(index) if self.image_cache is not None else None
        mask = self.mask_cache.read(index) if self.mask_cache is not None else None
        fresh_image, fresh_mask = image is None, mask is None
        if fresh_image:
            image = decode_image(*self.source(index, "image"), self.in_chans)
        if fresh_mask:
            src, name = self.source(index, "mask")
            mask = read_mask(src, self.num_classes, self.ignore_index, name)
        else:
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            raise SampleError(self.source(index, "mask")[1],
                              f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {self.source(index, 'image')[1]}"
                              f" is {image.shape[1]}x{image.shape[0]}")
        if fresh_image and self.image_cache is not None:
            self.image_cache.write(index, image)
        if fresh_mask and self.mask_cache is not None:
            self.mask_cache.write(index, mask[..., None])  # an int64 mask (>= 256 classes) has no slot: decoded
        return image, mask

    # the decoded-sample cache (plugtrain.plugins.datasets.cache): one per side, images and masks
    def cache_entries(self, which: str) -> Iterator[str]:
        """One identity per sample for a cache's key: the file's path, size and modification time."""
        for pair in self.pairs:
            path = pair[0 if which == "image" else 1]
            try:
                st = os.stat(path)
                yield f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                yield f"{path}\0-1"

    def cache_shape(self, i: int, which: str) -> tuple[int, int] | None:
        """``(height, width)`` of sample ``i``'s image or mask from its header (the cache's layout), or None."""
        from plugtrain.core.data import SampleError
        from plugtrain.plugins.datasets.decode import image_size

        try:
            return image_size(self.source(i, which)[0])
        except SampleError:
            return None

    def __repr__(self) -> str:
        cached = f", cache={self.image_cache.mode}" if self.image_cache is not None else ""
        return f"{type(self).__name__}({len(self)} image+mask pairs, channels={self.in_chans}{cached})"


class ShardPairSplit(PairSplit):
    """A split of image + mask samples in the tar shards ``plugtrain shards`` writes: each pair is ``(shard index,
    image offset, image size, mask offset, mask size, key)``; a sample is two reads and two decodes, as from files."""

    def __init__(self, shards: list[str], pairs: list[Any], num_classes: int, in_chans: int,
                 ignore_index: int | None):
        super().__init__(pairs, num_classes, in_chans, ignore_index)
        self.shards = shards

    def source(self, i: int, which: str) -> tuple[str | bytes, str]:
        from plugtrain.core.data import SampleError

        s, ioff, isize, moff, msize, key = self.pairs[i]
        off, size, member = (ioff, isize, "image") if which == "image" else (moff, msize, MASK_MEMBER)
        name = f"{self.shards[s]}:{key} ({member})"
        try:
            with open(self.shards[s], "rb") as f:
                data = os.pread(f.fileno(), size, off)
        except OSError as exc:
            raise SampleError(name, f"cannot read the shard: {exc.strerror or exc}") from None
        if len(data) != size:
            raise SampleError(name, "the shard is shorter than when it was indexed (changed or truncated)")
        return data, name

    def cache_entries(self, which: str) -> Iterator[str]:
        ids = []
        for p in self.shards:
            st = os.stat(p)
            ids.append(f"{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}")
        for s, ioff, isize, moff, msize, _ in self.pairs:
            yield f"{ids[s]}\0{ioff}\0{isize}" if which == "image" else f"{ids[s]}\0{moff}\0{msize}"


class _CacheSide:
    """One side (images or masks) of a split as :func:`plugtrain.plugins.datasets.cache.open_cache` sees a split."""

    cache: Any = None

    def __init__(self, split: PairSplit, which: str, channels: int, decoder: str) -> None:
        self.split, self.which, self.channels, self.decoder = split, which, channels, decoder

    def __len__(self) -> int:
        return len(self.split)

    def cache_entries(self) -> Iterator[str]:
        return self.split.cache_entries(self.which)

    def cache_shape(self, i: int) -> tuple[int, int] | None:
        return self.split.cache_shape(i, self.which)


def attach_caches(splits: Mapping[str, PairSplit | None], cache: str, cache_dir: str | None,
                  cache_max_gb: float | None) -> None:
    """Give each split its image cache and its mask cache (``cache_max_gb`` bounds all of them together). The masks'
    key holds the class count and ``ignore_index``: a cached mask was valid for the classes it is read with."""
    from plugtrain.plugins.datasets.cache import attach

    sides: dict[str, _CacheSide] = {}
    for name, split in splits.items():
        if split is None:
            continue
        sides[f"{name}-images"] = _CacheSide(split, "image", split.in_chans, "segmentation-pairs:image")
        sides[f"{name}-masks"] = _CacheSide(split, "mask", 1, f"segmentation-pairs:mask;classes={split.num_classes};"
                                                                 f"ignore={split.ignore_index}")
    attach(sides, cache, cache_dir, cache_max_gb, "segmentation-pairs")
    for name, split in splits.items():
        if split is not None:
            split.image_cache, split.mask_cache = sides[f"{name}-images"].cache, sides[f"{name}-masks"].cache


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


def shard_pairs(folder: str) -> tuple[list[str], dict[str, list[Any]], list[str]]:
    """The samples of a ``plugtrain shards`` folder of segmentation data: ``(shard paths, {split: [(shard index,
    image offset, image size, mask offset, mask size, key)]}, class names)``, each split in its shards' order."""
    from plugtrain.plugins.datasets.webdataset import META_NAME, read_meta, tar_samples

    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise _error(f"dataset segmentation-pairs: shards '{folder}' is not a folder (give the --out folder of "
                     f"`plugtrain shards`)")
    meta = read_meta(folder)
    if meta is None:
        raise _error(f"dataset segmentation-pairs: shards '{folder}' has no {META_NAME} (write it with `plugtrain "
                     f"shards SPEC --out {folder}`, SPEC a segmentation spec)")
    if meta.get("task") != "segmentation":
        raise _error(f"{os.path.join(folder, META_NAME)}: shards of task {meta.get('task')!r}, not segmentation "
                     f"(their targets are no masks; use the webdataset dataset)")
    image_exts = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    shards: list[str] = []
    out: dict[str, list[Any]] = {}
    for split, info in (meta.get("splits") or {}).items():
        records = out.setdefault(split, [])
        for fname in info.get("shards", []):
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise _error(f"dataset segmentation-pairs: {split} shard '{path}' does not exist")
            shards.append(path)
            for key, members, fault in tar_samples(path, path):
                image = next((members[e] for e in image_exts if e in members), None)
                mask = members.get(MASK_MEMBER)
                if fault or image is None or mask is None:
                    raise _error(f"dataset segmentation-pairs: {path}:{key}: "
                                 + (fault or f"needs an image and a .{MASK_MEMBER} member; it has "
                                             f"{', '.join(sorted(members)) or 'none'}"))
                records.append((len(shards) - 1, *image, *mask, key))
    return shards, out, list(meta.get("class_names") or [])


def segmentation_pairs(
    train: str | None = None,
    class_names: list[str] | None = None,
    val: str | None = None,
    test: str | None = None,
    shards: str | None = None,
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2,
    images_dir: str = "images",
    masks_dir: str = "masks",
    channels: Literal[1, 3] = 3,
    ignore_index: int | None = IGNORE_INDEX,
    cache: Literal["none", "memory", "disk"] = "none",
    cache_dir: str | None = None,
    cache_max_gb: float | None = None,
    seed: int = 0,
    on_error: str = "raise",
):
    """Image + mask pairs. ``train``, ``val``, ``test``: each a folder with ``images/`` and ``masks/`` whose files
    pair by name (``a.jpg`` with ``a.png``), or a CSV with the columns ``image,mask`` (paths relative to the CSV).
    Or ``shards``: the folder ``plugtrain shards`` wrote of a segmentation spec (its splits, in their order;
    ``class_names`` default to those it records). Without a val split, ``val_fraction`` of ``train`` is held out
    with the run's seed. ``class_names``: one name per mask value, background (0) first. ``channels``: 3 (RGB) or 1
    (grey). ``ignore_index``: the mask value no loss or metric counts (``None``: every value must be a class).
    ``cache``: ``"none"``, ``"memory"`` or ``"disk"`` (with ``cache_dir``, ``cache_max_gb``): images and masks are
    decoded once and kept, as imagefolder's (:mod:`plugtrain.plugins.datasets.cache`); samples are bitwise those of
    ``"none"``.
    """
    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.cache import check_params

    check_params(cache, cache_dir, cache_max_gb)
    shard_files: list[str] | None = None
    if shards is not None:
        if train is not None or val is not None or test is not None:
            raise _error("dataset segmentation-pairs: give either shards or train/val/test, not both")
        shard_files, by_split, recorded = shard_pairs(shards)
        if class_names is None:
            class_names = recorded
        elif recorded and list(class_names) != recorded:
            raise _error(f"dataset segmentation-pairs: class_names {list(class_names)} differ from the classes the "
                         f"shards' masks index, {recorded}; leave class_names out to use theirs")
        if not by_split.get("train"):
            raise _error(f"dataset segmentation-pairs: shards '{shards}' hold no train sample")
        train_pairs, val_pairs, test_pairs = by_split["train"], by_split.get("val") or None, by_split.get("test")
    else:
        if train is None:
            raise _error("dataset segmentation-pairs: give train (a folder of images/ and masks/, or a CSV of "
                         "image,mask paths), or shards (a `plugtrain shards` folder)")
        train_pairs = pairs_of(train, images_dir, masks_dir, "train")
        val_pairs = pairs_of(val, images_dir, masks_dir, "val") if val is not None else None
        test_pairs = pairs_of(test, images_dir, masks_dir, "test") if test is not None else None
    if class_names is None or len(class_names) < 2:
        raise _error("dataset segmentation-pairs: class_names needs at least two names (background first)")
    if ignore_index is not None and 0 <= ignore_index < len(class_names):
        raise _error(f"dataset segmentation-pairs: ignore_index {ignore_index} is the class {class_names[ignore_index]!r}"
                     f"; pick a value outside 0..{len(class_names) - 1} (255 by convention)")
    if val_pairs is None:
        order = np.random.default_rng(seed).permutation(len(train_pairs))
        n_val = max(1, round(len(train_pairs) * val_fraction))
        if n_val >= len(train_pairs):
            raise _error(f"dataset segmentation-pairs: {len(train_pairs)} pair(s) in train are too few to hold out "
                         f"val_fraction = {val_fraction}")
        val_pairs = [train_pairs[i] for i in sorted(order[:n_val])]
        train_pairs = [train_pairs[i] for i in sorted(order[n_val:])]
    n = len(class_names)

    def split(p):
        if shard_files is not None:
            return ShardPairSplit(shard_files, p, n, channels, ignore_index)
        return PairSplit(p, n, channels, ignore_index)

    splits = {"train": split(train_pairs), "val": split(val_pairs),
              "test": split(test_pairs) if test_pairs else None}
    attach_caches(splits, cache, cache_dir, cache_max_gb)
    return DatasetSplits(train=splits["train"], val=splits["val"], test=splits["test"],
                         class_names=list(class_names), in_chans=channels, task="segmentation")


segmentation_pairs.read_image = read_image  # type: ignore[attr-defined]
