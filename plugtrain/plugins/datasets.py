"""Built-in datasets: image folders, csv manifests, MNIST-format IDX files and scikit-learn's digits.

Every factory returns a :class:`plugtrain.core.data.DatasetSplits` whose splits are sequences of ``(image, target)``
with ``image`` an ``HxWxC`` uint8 array, a ``targets`` list (no decoding) for samplers, and ``skipped`` /
``problems`` describing what indexing dropped (see :class:`plugtrain.core.images.ImageFileSplit`).

When faults are found
---------------------
* At build time, always a :class:`~plugtrain.core.errors.PlugtrainError` (whatever ``on_error`` says): a missing
  root, manifest or IDX file, a folder without class sub-folders, a manifest without the needed header columns,
  an IDX file with a bad header or too few bytes, a bad parameter, a data set with no usable sample left.
* At build time, per ``on_error``: an empty class folder, a manifest row whose file is missing or whose label is
  out of range / unparsable, an IDX label out of range. ``"raise"``: a PlugtrainError naming the folder, or the
  ``csv:line`` and path, or the IDX file and index. ``"skip"``: the sample is dropped and counted in the split's
  ``skipped`` (an empty class folder drops no sample: the class is kept, so labels stay those of the folder names,
  and it is listed in ``problems``).
* At ``__getitem__`` (in DataLoader workers): a corrupt, truncated, zero-byte, unreadable or vanished image file
  raises :class:`~plugtrain.core.data.SampleError` with the path and the reason; the runtime raises or skips.

A grayscale image in an RGB data set (or a colour one with ``channels = 1``) is converted, never a fault.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from plugtrain import Component, hookimpl

#: Fashion-MNIST's class names, in label order.
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_VAL_FOLDERS = ("val", "valid", "validation")


# --------------------------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------------------------


def _error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def _check_common(on_error: str, channels: int | None = None) -> None:
    if on_error not in ("raise", "skip"):
        raise _error(f"data.on_error must be 'raise' or 'skip', not {on_error!r}")
    if channels is not None and channels not in (1, 3):
        raise _error(f"dataset parameter channels must be 1 or 3, not {channels!r}")


def _check_fraction(val_fraction: float, what: str) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise _error(f"{what}: val_fraction must be a number between 0 and 1 (exclusive), not {val_fraction!r}")


def _existing_dir(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise _error(f"{what} '{path}' does not exist")
    if not os.path.isdir(path):
        raise _error(f"{what} '{path}' is not a directory")
    return path


def _existing_file(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise _error(f"{what} '{path}' does not exist")
    if os.path.isdir(path):
        raise _error(f"{what} '{path}' is a directory, not a file")
    return path


def _subdirs(folder: str) -> list[str]:
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


# --------------------------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------------------------


def imagefolder(
    root: str,
    val_fraction: float = 0.2,
    channels: Literal[1, 3] = 3,
    extensions: list[str] | None = None,
    decoder: Literal["pil", "cv2"] = "pil",
    seed: int = 0,
    on_error: str = "raise",
):
    """Images in one sub-folder per class, decoded from disk as they are read (never all held in memory).

    Two layouts. With a ``train/`` folder under ``root``: ``train/<class>/...``, ``val/<class>/...`` (or ``valid/``,
    ``validation/``) and an optional ``test/<class>/...``; without ``val/``, ``val_fraction`` of ``train/`` is held
    out. Otherwise ``root/<class>/...`` is split into train and val, stratified, ``val_fraction`` held out, with the
    run's seed. Class names are the class folder names, sorted (union over the splits); sub-folders inside a class
    folder are searched too. Files are taken by extension (``extensions``, default png, jpg, jpeg, bmp, webp, tif,
    tiff, case-insensitive); hidden files are ignored.

    ``channels``: 3 (RGB; grayscale images are converted) or 1 (grayscale; colour images are converted).
    ``decoder``: ``pil`` (strict: truncated files are errors; complete 8-bit PNGs are read by OpenCV, bit-identical
    and faster) or ``cv2`` (OpenCV for every format: faster JPEG decoding, but truncated files decode partially).

    An empty class folder is a fault: with ``on_error = "raise"`` an error naming it; with ``"skip"`` the class is
    kept (labels stay those of the folder names) with no samples and listed in the split's ``problems``.
    """
    from plugtrain.core.images import IMAGE_EXTENSIONS, iter_image_files

    _check_common(on_error, channels)
    root = _existing_dir(root, "dataset root")
    exts = tuple(e if e.startswith(".") else "." + e for e in (extensions or IMAGE_EXTENSIONS))
    top = _subdirs(root)

    if "train" in top:
        split_dirs = {"train": os.path.join(root, "train")}
        val_name = next((v for v in _VAL_FOLDERS if v in top), None)
        if val_name:
            split_dirs["val"] = os.path.join(root, val_name)
        elif not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
            raise _error(f"dataset root '{root}' has train/ but no val/ folder, and val_fraction is {val_fraction!r}")
        else:
            _check_fraction(val_fraction, f"imagefolder '{root}'")
        if "test" in top:
            split_dirs["test"] = os.path.join(root, "test")
    else:
        _check_fraction(val_fraction, f"imagefolder '{root}'")
        split_dirs = {"all": root}

    per_split_classes = {name: _subdirs(folder) for name, folder in split_dirs.items()}
    for name, classes in per_split_classes.items():
        if not classes:
            folder = split_dirs[name]
            hint = ""
            if any(True for _ in iter_image_files(folder, exts)):
                hint = " (it holds images directly: put them in one sub-folder per class)"
            raise _error(f"dataset folder '{folder}' has no class sub-folders{hint}")
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
                    raise _error(
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
        _require_samples(paths, root)
        indexed.update(_fraction_split(paths, targets, val_fraction, seed))
    elif "val" not in indexed:
        paths, targets = indexed.pop("train")
        _require_samples(paths, split_dirs["train"])
        indexed.update(_fraction_split(paths, targets, val_fraction, seed))
    for name in ("train", "val"):
        _require_samples(indexed[name][0], split_dirs.get(name, root), name)
    return _file_splits(indexed, class_names, channels, decoder, "classification", {"train": problems}, {})


def _require_samples(paths: list[str], where: str, split: str = "") -> None:
    if not paths:
        which = f" for the {split} split" if split else ""
        raise _error(f"no usable images found in '{where}'{which}")


def _fraction_split(paths: list[str], targets: list[Any], val_fraction: float, seed: int, stratify: bool = True):
    import numpy as np

    from plugtrain.core.images import split_indices

    tr, va = split_indices(np.asarray(targets) if stratify else np.zeros(len(targets)), val_fraction, seed, stratify)
    return {
        "train": ([paths[i] for i in tr], [targets[i] for i in tr]),
        "val": ([paths[i] for i in va], [targets[i] for i in va]),
    }


def _file_splits(indexed, class_names, channels, decoder, task, problems, skipped):
    from plugtrain.core.data import DatasetSplits
    from plugtrain.core.images import ImageFileSplit

    splits = {
        name: ImageFileSplit(
            paths,
            targets,
            channels=channels,
            decoder=decoder,
            task=task,
            skipped=skipped.get(name, 0),
            problems=problems.get(name, ()),
        )
        for name, (paths, targets) in indexed.items()
    }
    return DatasetSplits(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        class_names=list(class_names),
        in_chans=channels,
        task=task,
    )


# --------------------------------------------------------------------------------------------------------------------
# csv manifest
# --------------------------------------------------------------------------------------------------------------------


class _Row:
    __slots__ = ("where", "path", "values")

    def __init__(self, where: str, path: str, values: list[str]) -> None:
        self.where, self.path, self.values = where, path, values


def _read_manifest(csv_path: str, root: str | None, task: str, target_columns: list[str] | None):
    """Header check and raw rows of one manifest: ``(rows, faults, value_columns)``; faults are per-row."""
    import csv as csvmod

    csv_path = _existing_file(csv_path, "csv manifest")
    base = os.path.expanduser(root) if root else os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csvmod.reader(f)
            header = next(reader, None)
            if header is None:
                raise _error(f"csv manifest '{csv_path}' is empty (expected a header such as 'path,label')")
            header = [h.strip() for h in header]
            if "path" not in header:
                raise _error(
                    f"{csv_path}:1: the header needs a 'path' column and a 'label' column (classification) or target "
                    f"column(s) (regression); found: {', '.join(header) or '(nothing)'}"
                )
            if task == "auto":
                task = "classification" if "label" in header else "regression"
            if task == "classification":
                if "label" not in header:
                    raise _error(
                        f"{csv_path}:1: a classification manifest needs a 'label' column; found: {', '.join(header)}"
                    )
                columns = ["label"]
            else:
                columns = list(target_columns) if target_columns else [h for h in header if h not in ("path", "")]
                missing = [c for c in columns if c not in header]
                if not columns or missing:
                    what = f"no column(s) {', '.join(missing)}" if missing else "no target column"
                    raise _error(f"{csv_path}:1: regression manifest has {what}; found: {', '.join(header)}")
            path_i = header.index("path")
            value_i = [header.index(c) for c in columns]
            rows: list[_Row] = []
            faults: list[tuple[str, str, str]] = []  # (where, path, reason)
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                where = f"{csv_path}:{reader.line_num}"
                if len(record) != len(header):
                    faults.append((where, "", f"expected {len(header)} fields, found {len(record)}"))
                    continue
                rel = record[path_i].strip()
                if not rel:
                    faults.append((where, "", "empty path"))
                    continue
                rows.append(
                    _Row(where, os.path.join(base, os.path.expanduser(rel)), [record[i].strip() for i in value_i])
                )
    except UnicodeDecodeError as exc:
        raise _error(f"csv manifest '{csv_path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csvmod.Error as exc:
        raise _error(f"{csv_path}: malformed csv: {exc}") from None
    except OSError as exc:
        raise _error(f"cannot read csv manifest '{csv_path}': {exc.strerror or exc}") from None
    return rows, faults, columns, task


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def csv_manifest(
    csv: str,
    val_csv: str | None = None,
    test_csv: str | None = None,
    val_fraction: float = 0.2,
    root: str | None = None,
    task: Literal["auto", "classification", "regression"] = "auto",
    target_columns: list[str] | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    channels: Literal[1, 3] = 3,
    check_files: bool = True,
    decoder: Literal["pil", "cv2"] = "pil",
    seed: int = 0,
    on_error: str = "raise",
):
    """Images listed in a csv manifest: a header ``path,label`` (classification) or ``path,target`` (regression).

    ``path`` is relative to the manifest's folder (or to ``root`` when given), or absolute. ``task = "auto"`` reads a
    ``label`` column as classification and otherwise every other column (or ``target_columns``) as float regression
    targets: one column gives a float target, several a float vector, and ``class_names`` of the splits are the
    target column names (so their count is the model's output width).

    Classification labels are class indices (integers; ``num_classes`` defaults to the largest + 1 and the class names
    to ``"0"``, ``"1"``, ...) or class names (``class_names`` defaults to the distinct names of all manifests,
    sorted). With ``class_names`` given, labels are names from it or indices into it.

    Validation comes from ``val_csv``, or else ``val_fraction`` of ``csv`` (stratified for classification) with the
    run's seed; ``test_csv`` is optional.

    Bad rows (a file that does not exist when ``check_files``, a label out of range or not a number, a row with the
    wrong number of fields): ``on_error = "raise"`` stops with the ``csv:line`` and the path; ``"skip"`` drops them
    and counts them in the split's ``skipped`` (rows of ``csv`` count in the train split). Image decoding faults come
    at read time as :class:`~plugtrain.core.data.SampleError`.
    """
    import math

    _check_common(on_error, channels)
    if task not in ("auto", "classification", "regression"):
        raise _error(f"csv dataset: task must be 'auto', 'classification' or 'regression', not {task!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise _error(f"csv dataset: num_classes must be a positive integer, not {num_classes!r}")
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise _error(f"csv dataset: {len(class_names)} class_names but num_classes = {num_classes}")
    if val_csv is None:
        _check_fraction(val_fraction, f"csv manifest '{csv}'")

    manifests = {"train": csv, "val": val_csv, "test": test_csv}
    read: dict[str, tuple[list[_Row], list[tuple[str, str, str]]]] = {}
    columns: list[str] = []
    for name, path in manifests.items():
        if path is None:
            continue
        rows, faults, cols, found_task = _read_manifest(path, root, task, target_columns)
        if task == "auto":
            task = found_task
        if columns and cols != columns:
            raise _error(f"csv manifest '{path}' has columns {cols}, but '{csv}' has {columns}")
        columns = cols
        read[name] = (rows, faults)

    # Label (or target) parsing rules.
    names: list[str]
    if task == "classification":
        raw = [r.values[0] for rows, _ in read.values() for r in rows if r.values[0]]
        if class_names is not None:
            names = [str(c) for c in class_names]
        elif raw and all(_as_int(v) is not None for v in raw):
            top = max(_as_int(v) for v in raw)  # type: ignore[type-var]
            names = [str(i) for i in range(num_classes if num_classes is not None else max(top, 0) + 1)]
        else:
            names = sorted(set(raw))
            if num_classes is not None and len(names) != num_classes:
                raise _error(
                    f"csv manifest '{csv}': the labels hold {len(names)} class names but num_classes = {num_classes}"
                )
        by_name = {n: i for i, n in enumerate(names)}
        by_int = class_names is None and all(_as_int(v) is not None for v in raw)

        def parse(values: list[str]) -> tuple[Any, str]:
            label = values[0]
            if not label:
                return None, "empty label"
            if not by_int and label in by_name:
                return by_name[label], ""
            index = _as_int(label)
            if index is None:
                return None, f"unknown class name {label!r}." + _suggest(label, names)
            if not 0 <= index < len(names):
                return None, f"label {index} out of range: {len(names)} classes (0..{len(names) - 1})"
            return index, ""
    else:
        names = list(columns)

        def parse(values: list[str]) -> tuple[Any, str]:
            out = []
            for col, text in zip(columns, values, strict=True):
                try:
                    value = float(text)
                except ValueError:
                    return None, f"target {col} = {text!r} is not a number"
                if not math.isfinite(value):
                    return None, f"target {col} = {text!r} is not finite"
                out.append(value)
            return out, ""

    indexed: dict[str, tuple[list[str], list[Any]]] = {}
    problems: dict[str, list[tuple[str, str]]] = {}
    skipped: dict[str, int] = {}
    for name, (rows, faults) in read.items():
        paths: list[str] = []
        targets: list[Any] = []
        bad = list(faults)
        for r in rows:
            target, reason = parse(r.values)
            if not reason and check_files and not os.path.isfile(r.path):
                reason = "file not found" if not os.path.exists(r.path) else "not a file"
            if reason:
                bad.append((r.where, r.path, reason))
                continue
            paths.append(r.path)
            targets.append(target)
        if bad:
            if on_error == "raise":
                where, path, reason = min(bad, key=lambda b: _line_key(b[0]))
                more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
                raise _error(f"{where}: {path + ': ' if path else ''}{reason}{more}")
            problems[name] = [
                (w, f"{p + ': ' if p else ''}{why}") for w, p, why in sorted(bad, key=lambda b: _line_key(b[0]))
            ]
            skipped[name] = len(bad)
        _require_samples(paths, manifests[name], name)
        indexed[name] = (paths, targets)

    if "val" not in indexed:
        paths, targets = indexed.pop("train")
        indexed.update(_fraction_split(paths, targets, val_fraction, seed, stratify=task == "classification"))
        _require_samples(indexed["val"][0], csv, "val")
    return _file_splits(indexed, names, channels, decoder, task, problems, skipped)


def _line_key(where: str) -> tuple[str, int]:
    file, _, line = where.rpartition(":")
    return file, int(line) if line.isdigit() else 0


def _suggest(word: str, names: list[str]) -> str:
    from plugtrain.core.errors import did_you_mean

    return did_you_mean(word, names)


# --------------------------------------------------------------------------------------------------------------------
# idx (MNIST format)
# --------------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx(root: str, name: str, required: bool) -> str | None:
    for candidate in (name, name + ".gz") if not name.endswith(".gz") else (name, name[:-3]):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    if required:
        raise _error(f"IDX file '{os.path.join(root, name)}' (or '{name}.gz') does not exist")
    return None


def read_idx(path: str) -> Any:
    """The array in an IDX file (the MNIST format): a lazily opened ``np.memmap`` for a raw file, an in-memory array
    (decompressed once) for a ``.gz`` one. Raises PlugtrainError for anything that is not a well-formed IDX file."""
    import gzip
    import zlib

    import numpy as np

    from plugtrain.core.images import LazyMemmap

    def parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise _error(f"'{path}' is not an IDX file (bad magic number {head[:4].hex() or 'none'})")
        ndim = head[3]
        if len(head) < 4 + 4 * ndim:
            raise _error(f"IDX file '{path}' is truncated (header cut short)")
        shape = tuple(int.from_bytes(head[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
        return np.dtype(_IDX_DTYPES[head[2]]), shape, 4 + 4 * ndim

    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
            dtype, shape, offset = parse_header(data[: 4 + 4 * 255])
            need = int(np.prod(shape)) * dtype.itemsize
            if len(data) - offset < need:
                raise _error(f"IDX file '{path}' is truncated: {len(data) - offset} data bytes, {need} expected")
            array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
            return array.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else array
        with open(path, "rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
        dtype, shape, offset = parse_header(head)
        need = int(np.prod(shape)) * dtype.itemsize
        have = os.path.getsize(path) - offset
        if have < need:
            raise _error(f"IDX file '{path}' is truncated: {have} data bytes, {need} expected")
        return LazyMemmap(path, dtype, shape, offset)
    except (OSError, EOFError, zlib.error) as exc:
        raise _error(f"cannot read IDX file '{path}': {exc}") from None


def idx(
    root: str,
    val_split: Literal["fraction", "test"] = "fraction",
    val_fraction: float = 0.2,
    class_names: list[str] | Literal["digits", "fashion"] | None = None,
    channels: Literal[1, 3] = 1,
    train_images: str = "train-images-idx3-ubyte",
    train_labels: str = "train-labels-idx1-ubyte",
    test_images: str = "t10k-images-idx3-ubyte",
    test_labels: str = "t10k-labels-idx1-ubyte",
    seed: int = 0,
    on_error: str = "raise",
):
    """MNIST-format IDX files in ``root`` (raw or ``.gz``), e.g. Debian's ``dataset-fashion-mnist`` in
    ``/usr/share/datasets/fashion-mnist``, or MNIST, KMNIST, EMNIST in the same format.

    Raw files are memory-mapped (read on access); ``.gz`` files are decompressed once into memory. Validation is
    ``val_fraction`` of the training files (stratified, with the run's seed; the ``t10k`` files, when present, become
    the test split) or, with ``val_split = "test"``, the ``t10k`` files. ``class_names``: a list, ``"digits"``
    (``0``..``9``), ``"fashion"`` (Fashion-MNIST's names), or by default ``"0"`` up to the largest label.
    ``channels = 3`` repeats the gray channel.

    A label outside the class names: ``on_error = "raise"`` stops naming the file and index, ``"skip"`` drops it
    and counts it in the split's ``skipped``.
    """
    import numpy as np

    from plugtrain.core.data import DatasetSplits
    from plugtrain.core.images import ArraySplit, split_indices

    _check_common(on_error, channels)
    if val_split not in ("fraction", "test"):
        raise _error(f"idx dataset: val_split must be 'fraction' or 'test', not {val_split!r}")
    if val_split == "fraction":
        _check_fraction(val_fraction, f"idx dataset '{root}'")
    root = _existing_dir(root, "IDX dataset root")

    def load(images_name: str, labels_name: str, required: bool):
        images_path = _find_idx(root, images_name, required)
        labels_path = _find_idx(root, labels_name, required)
        if images_path is None or labels_path is None:
            if images_path or labels_path:
                raise _error(
                    f"'{images_path or labels_path}' has no matching {'labels' if images_path else 'images'}"
                    f" file ('{labels_name if images_path else images_name}') in '{root}'"
                )
            return None
        images = read_idx(images_path)
        if images.dtype != np.uint8 or len(images.shape) not in (3, 4):
            raise _error(
                f"IDX file '{images_path}' holds {images.dtype} data of shape {images.shape}; images must be "
                "unsigned bytes of shape (N, H, W) or (N, H, W, C)"
            )
        if len(images.shape) == 4 and images.shape[3] not in (1, 3):
            raise _error(f"IDX file '{images_path}' has {images.shape[3]} channels; 1 or 3 expected")
        labels = np.asarray(read_idx(labels_path)[:])
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise _error(
                f"IDX file '{labels_path}' holds {labels.dtype} data of shape {labels.shape}; labels must be "
                "integers of shape (N,)"
            )
        if len(labels) != images.shape[0]:
            raise _error(f"'{images_path}' holds {images.shape[0]} images but '{labels_path}' {len(labels)} labels")
        return images, labels.astype(np.int64), labels_path

    train = load(train_images, train_labels, True)
    test = load(test_images, test_labels, val_split == "test")

    if class_names == "digits":
        names = [str(d) for d in range(10)]
    elif class_names == "fashion":
        names = list(FASHION_MNIST_CLASSES)
    elif class_names is None:
        top = max(int(part[1].max()) for part in (train, test) if part is not None and len(part[1]))
        names = [str(i) for i in range(max(top, 0) + 1)]
    elif isinstance(class_names, str):
        raise _error(f"idx dataset: class_names must be a list, 'digits' or 'fashion', not {class_names!r}")
    else:
        names = [str(c) for c in class_names]

    def valid(part, name: str):
        images, labels, labels_path = part
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if len(bad) and on_error == "raise":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise _error(
                f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} out of range: {len(names)} classes "
                f"(0..{len(names) - 1}){more}"
            )
        keep = np.flatnonzero((labels >= 0) & (labels < len(names)))
        problems = [(f"{labels_path}[{i}]", f"label {labels[i]} out of range") for i in bad[:100]]
        if len(bad) > 100:
            problems.append((labels_path, f"... and {len(bad) - 100} more labels out of range"))
        return keep, len(bad), problems

    train_keep, train_skipped, train_problems = valid(train, "train")
    if val_split == "test":
        val_keep, val_skipped, val_problems = valid(test, "val")
        tr_idx = train_keep
        val_part = ArraySplit(
            test[0], test[1], val_keep, channels=channels, skipped=val_skipped, problems=val_problems, source=test[2]
        )
        test_split = None
    else:
        tr, va = split_indices(train[1][train_keep], val_fraction, seed)
        tr_idx = train_keep[tr]
        val_part = ArraySplit(train[0], train[1], train_keep[va], channels=channels, source=train[2])
        test_split = None
        if test is not None:
            test_keep, test_skipped, test_problems = valid(test, "test")
            test_split = ArraySplit(
                test[0],
                test[1],
                test_keep,
                channels=channels,
                skipped=test_skipped,
                problems=test_problems,
                source=test[2],
            )
    train_split = ArraySplit(
        train[0], train[1], tr_idx, channels=channels, skipped=train_skipped, problems=train_problems, source=train[2]
    )
    for split, name in ((train_split, "train"), (val_part, "val")):
        if len(split) == 0:
            raise _error(f"idx dataset '{root}': no usable samples for the {name} split")
    return DatasetSplits(train=train_split, val=val_part, test=test_split, class_names=names, in_chans=channels)


# --------------------------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------------------------


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
    from plugtrain.core.images import ArraySplit, split_indices

    _check_fraction(val_fraction, "sklearn-digits")
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise _error(f"sklearn-digits: upscale must be a positive integer, not {upscale!r}")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    images = np.ascontiguousarray(images[..., None])  # N x H x W x 1
    targets = digits.target.astype(np.int64)
    if target not in ("class", "value"):
        raise _error(f"sklearn-digits: target must be 'class' or 'value', not {target!r}")
    tr, va = split_indices(targets, val_fraction, seed)
    train = ArraySplit(images, targets, tr, source="sklearn digits")
    val = ArraySplit(images, targets, va, source="sklearn digits")
    if target == "value":
        return DatasetSplits(train=_FloatTargets(train), val=_FloatTargets(val), class_names=["digit"], in_chans=1,
                             task="regression")
    return DatasetSplits(train=train, val=val, class_names=[str(d) for d in range(10)], in_chans=1)


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


@hookimpl
def plugtrain_datasets():
    return [
        Component(
            "imagefolder", imagefolder, summary="Images in one sub-folder per class (train/val folders or a split)."
        ),
        Component("csv", csv_manifest, summary="Images listed in a csv manifest: path,label or path,target."),
        Component("idx", idx, summary="MNIST-format IDX files (MNIST, Fashion-MNIST), raw or gzipped."),
        Component("sklearn-digits", sklearn_digits, summary="scikit-learn's 1,797 8x8 handwritten digits (no files)."),
    ]
