"""``volumes``: signals and volumes (or images) in ``.npy``, multi-page TIFF or NIfTI files, with class or value
targets.

A split is a folder of one sub-folder per class (classification), or a CSV of ``path,label`` (classification: a
class name) or ``path,target`` (regression: a number), paths relative to the CSV. A file holds one sample of the
spatial rank that ``data.image_size`` gives (``[L]`` signals, ``[D, H, W]`` volumes): without a channel axis
(``L`` / ``DxHxW``) or channels-last (``LxC`` / ``DxHxWxC``); a NIfTI file's 4th axis and a TIFF's samples-per-pixel
are channels. Samples keep their dtype (``pixels = "raw"``: uint8 is scaled by 255, uint16 by 65535, floats as
they are).
"""

from __future__ import annotations

import csv
import os
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Interval

EXTENSIONS = (".npy", ".tif", ".tiff", ".nii", ".nii.gz")


def _error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def load_array(path: str) -> np.ndarray:
    """The array a ``.npy``, TIFF or NIfTI file holds (its own dtype and axes); raises ``SampleError``."""
    from plugtrain.core.data import SampleError

    low = path.lower()
    try:
        if low.endswith(".npy"):
            a = np.load(path, allow_pickle=False)
        elif low.endswith((".tif", ".tiff")):
            import tifffile

            a = tifffile.imread(path)
        elif low.endswith((".nii", ".nii.gz")):
            import nibabel

            a = np.asanyarray(nibabel.load(path).dataobj)
        else:
            raise SampleError(path, f"not a sample file (one of {', '.join(EXTENSIONS)})")
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader's fault: this file is unreadable
        raise SampleError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    return np.asarray(a)


def as_sample(a: np.ndarray, rank: int, path: str) -> np.ndarray:
    """``a`` channels-last with ``rank`` spatial axes (a channel axis added when it has none)."""
    from plugtrain.core.data import SampleError

    if a.ndim == rank:
        a = a[..., None]
    if a.ndim != rank + 1:
        raise SampleError(path, f"holds an array of shape {a.shape}; {rank}-D samples (data.image_size) are "
                                f"{'L' if rank == 1 else 'HxW' if rank == 2 else 'DxHxW'} or that with a last "
                                f"channel axis")
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    elif a.dtype not in (np.uint8, np.uint16, np.float32):
        a = a.astype(np.float32)
    return a


class VolumeSplit:
    """A split of ``(path, target)`` pairs, read in ``__getitem__`` (so in DataLoader workers)."""

    pixels = "raw"

    def __init__(self, items: list[tuple[str, Any]], rank: int) -> None:
        self.items, self.spatial_dims = items, rank
        first = items[0][1] if items else None
        self.targets = [t for _, t in items] if isinstance(first, (int, np.integer)) else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        path, target = self.items[index]
        return as_sample(load_array(path), self.spatial_dims, path), target

    def __repr__(self) -> str:
        return f"VolumeSplit({len(self)} {self.spatial_dims}-D samples)"


def _folder(root: str, class_names: list[str] | None) -> tuple[list[tuple[str, Any]], list[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if class_names is None:
        class_names = classes
    items = []
    for c in classes:
        if c not in class_names:
            raise _error(f"dataset volumes: folder '{os.path.join(root, c)}' is not one of class_names {class_names}")
        folder = os.path.join(root, c)
        items += [(os.path.join(folder, n), class_names.index(c)) for n in sorted(os.listdir(folder))
                  if n.lower().endswith(EXTENSIONS) and not n.startswith(".")]
    return items, class_names


def _csv(path: str, class_names: list[str] | None, regression: bool) -> tuple[list[tuple[str, Any]], list[str]]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        want = "target" if regression else "label"
        if "path" not in cols or want not in cols:
            raise _error(f"{path}:1: a volumes CSV needs the columns path,{want} (it has {', '.join(cols)})")
        rows = [(line, (r.get("path") or "").strip(), (r.get(want) or "").strip())
                for line, r in enumerate(reader, start=2)]
    if class_names is None and not regression:
        class_names = sorted({v for _, _, v in rows})
    items: list[tuple[str, Any]] = []
    for line, p, v in rows:
        if not p:
            raise _error(f"{path}:{line}: a row needs a path")
        if regression:
            try:
                items.append((os.path.join(base, p), float(v)))
            except ValueError:
                raise _error(f"{path}:{line}: target {v!r} is not a number") from None
        else:
            if v not in (class_names or []):
                from plugtrain.core.errors import did_you_mean

                raise _error(f"{path}:{line}: label {v!r} is not one of class_names." + did_you_mean(v, class_names))
            items.append((os.path.join(base, p), class_names.index(v)))
    return items, list(class_names or [])


def volumes(
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    class_names: list[str] | None = None,
    task: Literal["classification", "regression"] = "classification",
    val_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2,
    image_size: Any = None,
    seed: int = 0,
    on_error: str = "raise",
):
    """Signals or volumes in files. ``train``, ``val``, ``test``: each a folder of one sub-folder per class, or a CSV
    of ``path,label`` (or ``path,target`` with ``task = "regression"``). Without ``val``, ``val_fraction`` of
    ``train`` is held out with the run's seed. The samples' spatial rank is that of ``data.image_size``, a list
    (``[L]``: signals; ``[D, H, W]``: volumes)."""
    from plugtrain.core.data import DatasetSplits
    from plugtrain.core.spec.model import spatial_rank

    if not isinstance(image_size, list):
        raise _error("dataset volumes: set data.image_size to the samples' spatial size, a list: [L] for signals, "
                     "[D, H, W] for volumes (or [H, W] for images)")
    rank = spatial_rank(image_size) or 3
    if train is None:
        raise _error("dataset volumes: give train (a folder of class folders, or a CSV of path,label)")
    regression = task == "regression"

    def items_of(source: str, what: str, names: list[str] | None) -> tuple[list[tuple[str, Any]], list[str]]:
        source = os.path.expanduser(source)
        if not os.path.exists(source):
            raise _error(f"dataset volumes: {what} '{source}' does not exist")
        if os.path.isdir(source):
            if regression:
                raise _error(f"dataset volumes: a regression {what} split is a CSV of path,target, not a folder")
            items, names = _folder(source, names)
        else:
            items, names = _csv(source, names, regression)
        if not items:
            raise _error(f"dataset volumes: {what} '{source}' holds no {', '.join(EXTENSIONS)} files")
        return items, names

    train_items, class_names = items_of(train, "train", class_names)
    val_items = items_of(val, "val", class_names)[0] if val is not None else None
    test_items = items_of(test, "test", class_names)[0] if test is not None else None
    if val_items is None:  # held out as the built-in datasets do it (stratified by class for classification)
        from plugtrain.plugins.datasets.common import fraction_split

        n_val = max(1, round(len(train_items) * val_fraction))
        if n_val >= len(train_items):
            raise _error(f"dataset volumes: {len(train_items)} sample(s) in train are too few to hold out "
                         f"val_fraction = {val_fraction}")
        parts = fraction_split([p for p, _ in train_items], [t for _, t in train_items], val_fraction, seed,
                               stratify=not regression)
        train_items, val_items = (list(zip(*parts[k], strict=True)) for k in ("train", "val"))
    first = VolumeSplit(train_items[:1], rank)[0][0]
    return DatasetSplits(train=VolumeSplit(train_items, rank), val=VolumeSplit(val_items, rank),
                         test=VolumeSplit(test_items, rank) if test_items else None,
                         class_names=["target"] if regression else list(class_names), in_chans=int(first.shape[-1]),
                         task="regression" if regression else None)


def read_image(path: str, *, in_chans: int, params: Any = None) -> np.ndarray:
    """One sample file as the dataset reads it (for ``predict``): its array, channels-last when it has a channel
    axis (the pipeline adds a missing one)."""
    from plugtrain.core.data import SampleError

    if not os.path.isfile(path):
        raise _error(f"{path}: not a file")
    try:
        a = load_array(path)
    except SampleError as exc:
        raise _error(f"{path}: {exc.reason}") from None
    return a.astype(np.float32) if a.dtype == np.float64 else a


volumes.read_image = read_image  # type: ignore[attr-defined]
volumes.read_extensions = EXTENSIONS  # type: ignore[attr-defined]  (what `plugtrain predict FOLDER` reads)
