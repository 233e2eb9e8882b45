"""``imagefolder``: images in one sub-folder per class."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from plugtrain.plugins.datasets.common import (
    check_common,
    check_fraction,
    error,
    existing_dir,
    file_splits,
    fraction_split,
    read_as,
    require_samples,
    subdirs,
)

_VAL_FOLDERS = ("val", "valid", "validation")


def imagefolder(
    root: str,
    val_fraction: float = 0.2,
    channels: int | list[int] = 3,
    pixels: Literal["uint8", "raw"] = "uint8",
    npy_layout: Literal["HWC", "CHW"] = "HWC",
    extensions: list[str] | None = None,
    decoder: Literal["pil", "cv2"] = "pil",
    cache: Literal["none", "memory", "disk"] = "none",
    cache_dir: str | None = None,
    cache_max_gb: float | None = None,
    seed: int = 0,
    on_error: str = "raise",
):
    """Images in one sub-folder per class, decoded from disk as they are read (held in memory only with ``cache``).

    Two layouts. With a ``train/`` folder under ``root``: ``train/<class>/...``, ``val/<class>/...`` (or ``valid/``,
    ``validation/``) and an optional ``test/<class>/...``; without ``val/``, ``val_fraction`` of ``train/`` is held
    out. Otherwise ``root/<class>/...`` is split into train and val, stratified, ``val_fraction`` held out, with the
    run's seed. Class names are the class folder names, sorted (union over the splits); sub-folders inside a class
    folder are searched too. Files are taken by extension (``extensions``, default png, jpg, jpeg, bmp, webp, tif,
    tiff, case-insensitive); hidden files are ignored.

    ``channels``: 3 (RGB; grayscale images are converted) or 1 (grayscale; colour images are converted).
    ``pixels``: ``"uint8"`` (default: every image converted to 8-bit grey or RGB as ``channels`` says) or ``"raw"``
    (pixels as stored: 8/16-bit integer or float32, any channel count; multi-page and multi-channel TIFF, ``.npy``
    arrays laid out as ``npy_layout`` says, ``HWC`` or ``CHW``); ``channels`` is then the count every image must have,
    or a list of the channel indices to keep, in order (``[0, 2, 3]``). Raw images must all share one dtype and
    channel count (the pre-flight reads the headers and names the first file that differs).
    ``decoder``: ``pil`` (strict: truncated files are errors; complete 8-bit PNGs are read by OpenCV, bit-identical)
    or ``cv2`` (OpenCV for every format: faster, but truncated files decode partially).

    An empty class folder is a fault: with ``on_error = "raise"`` an error naming it; with ``"skip"`` the class is
    kept (labels stay those of the folder names) with no samples and listed in the split's ``problems``.

    ``cache``: ``"none"`` (default: decode every file every epoch, nothing kept), ``"memory"`` (decoded pixels in
    ``/dev/shm``, one copy per machine, removed when the last process exits) or ``"disk"`` (in ``cache_dir``, kept
    for later runs). Each image is decoded once, on first touch in the DataLoader workers; later epochs only
    augment. Batches are bitwise those of ``"none"``. The size is checked first: a cache that does not fit (or
    exceeds ``cache_max_gb``, for all splits together) is refused with the size and the free room. See
    :mod:`plugtrain.plugins.datasets.cache`.
    """
    from plugtrain.core.files import IMAGE_EXTENSIONS, RAW_EXTENSIONS, iter_image_files
    from plugtrain.plugins.datasets.cache import check_params

    check_common(on_error, channels, pixels, npy_layout)
    check_params(cache, cache_dir, cache_max_gb)
    root = existing_dir(root, "dataset root")
    default_exts = RAW_EXTENSIONS if pixels == "raw" else IMAGE_EXTENSIONS
    exts = tuple(e if e.startswith(".") else "." + e for e in (extensions or default_exts))
    top = subdirs(root)

    if "train" in top:
        split_dirs = {"train": os.path.join(root, "train")}
        val_name = next((v for v in _VAL_FOLDERS if v in top), None)
        if val_name:
            split_dirs["val"] = os.path.join(root, val_name)
        elif not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
            raise error(f"dataset root '{root}' has train/ but no val/ folder, and val_fraction is {val_fraction!r}")
        else:
            check_fraction(val_fraction, f"imagefolder '{root}'")
        if "test" in top:
            split_dirs["test"] = os.path.join(root, "test")
    else:
        check_fraction(val_fraction, f"imagefolder '{root}'")
        split_dirs = {"all": root}

    per_split_classes = {name: subdirs(folder) for name, folder in split_dirs.items()}
    for name, classes in per_split_classes.items():
        if not classes:
            folder = split_dirs[name]
            hint = ""
            if any(True for _ in iter_image_files(folder, exts)):
                hint = " (it holds images directly: put them in one sub-folder per class)"
            raise error(f"dataset folder '{folder}' has no class sub-folders{hint}")
    class_names = sorted(set().union(*per_split_classes.values()))
    class_index = {c: i for i, c in enumerate(class_names)}
    problems: list[tuple[str, str]] = []
    for name, classes in per_split_classes.items():
        if name in ("val", "test"):
            continue
        for c in class_names:
            if c not in classes:
                problems.append((os.path.join(split_dirs[name], c), f"class '{c}' has no {name} folder"))

    indexed: dict[str, tuple[list[str], list[int]]] = {}
    for name, folder in split_dirs.items():
        paths: list[str] = []
        targets: list[int] = []
        for c in per_split_classes[name]:
            class_dir = os.path.join(folder, c)
            files = list(iter_image_files(class_dir, exts))
            if not files:
                if on_error == "raise":
                    raise error(
                        f"class folder '{class_dir}' holds no images ({', '.join(e[1:] for e in exts)}); add images, "
                        f'remove the folder, or set data.on_error = "skip" to keep the class with no samples'
                    )
                problems.append((class_dir, "class folder holds no images: class kept with no samples"))
                continue
            paths.extend(files)
            targets.extend([class_index[c]] * len(files))
        indexed[name] = (paths, targets)

    if "all" in indexed:
        paths, targets = indexed.pop("all")
        require_samples(paths, root)
        indexed.update(fraction_split(paths, targets, val_fraction, seed))
    elif "val" not in indexed:
        paths, targets = indexed.pop("train")
        require_samples(paths, split_dirs["train"])
        indexed.update(fraction_split(paths, targets, val_fraction, seed))
    for name in ("train", "val"):
        require_samples(indexed[name][0], split_dirs.get(name, root), name)
    return file_splits(indexed, class_names, channels, decoder, "classification", {"train": problems}, {},
                       cache=cache, cache_dir=cache_dir, cache_max_gb=cache_max_gb, dataset="imagefolder",
                       pixels=pixels, npy_layout=npy_layout)


def read_image(path: str | os.PathLike[str], *, in_chans: int, params: Mapping[str, Any] | None = None) -> Any:
    """One image file as this dataset's samples come out: its decoder, its pixels mode and channels.

    ``decoder``: the strict decoder of that parameter; with ``pixels = "raw"`` the pixels as stored (its ``channels``
    and ``npy_layout``)."""
    return read_as(imagefolder, path, in_chans, params)


imagefolder.read_image = read_image
