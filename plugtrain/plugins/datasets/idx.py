"""``idx``: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), raw or gzipped."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from plugtrain.plugins.datasets.common import check_common, check_fraction, error, existing_dir

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

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx(root: str, name: str, required: bool) -> str | None:
    for candidate in (name, name + ".gz") if not name.endswith(".gz") else (name, name[:-3]):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    if required:
        raise error(f"IDX file '{os.path.join(root, name)}' (or '{name}.gz') does not exist")
    return None


def read_idx(path: str) -> Any:
    """The array in an IDX file (the MNIST format): a lazily opened ``np.memmap`` for a raw file, an in-memory array
    (decompressed once) for a ``.gz`` one. Raises PlugtrainError for anything that is not a well-formed IDX file."""
    import gzip
    import zlib

    import numpy as np

    from plugtrain.plugins.datasets.splits import LazyMemmap

    def parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise error(f"'{path}' is not an IDX file (bad magic number {head[:4].hex() or 'none'})")
        ndim = head[3]
        if len(head) < 4 + 4 * ndim:
            raise error(f"IDX file '{path}' is truncated (header cut short)")
        shape = tuple(int.from_bytes(head[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
        return np.dtype(_IDX_DTYPES[head[2]]), shape, 4 + 4 * ndim

    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
            dtype, shape, offset = parse_header(data[: 4 + 4 * 255])
            need = int(np.prod(shape)) * dtype.itemsize
            if len(data) - offset < need:
                raise error(f"IDX file '{path}' is truncated: {len(data) - offset} data bytes, {need} expected")
            array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
            return array.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else array
        with open(path, "rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
        dtype, shape, offset = parse_header(head)
        need = int(np.prod(shape)) * dtype.itemsize
        have = os.path.getsize(path) - offset
        if have < need:
            raise error(f"IDX file '{path}' is truncated: {have} data bytes, {need} expected")
        return LazyMemmap(path, dtype, shape, offset)
    except (OSError, EOFError, zlib.error) as exc:
        raise error(f"cannot read IDX file '{path}': {exc}") from None


def _check_raw(path: str, images: Any, channels: Any) -> None:
    """With ``pixels = "raw"``: numeric images of shape (N, H, W) or (N, H, W, C) that have the channels asked for."""
    shape = tuple(images.shape)
    if len(shape) not in (3, 4) or images.dtype.kind not in "uif":
        raise error(f"IDX file '{path}' holds {images.dtype} data of shape {shape}; images must be numbers of shape "
                    "(N, H, W) or (N, H, W, C)")
    have = shape[3] if len(shape) == 4 else 1
    if isinstance(channels, list) and max(channels) >= have:
        raise error(f"IDX file '{path}' has {have} channel(s); channels = {channels} asks for index {max(channels)}")
    if not isinstance(channels, list) and channels != have:
        raise error(f"IDX file '{path}' has {have} channel(s) but the dataset's channels = {channels}")


def idx(
    root: str,
    val_split: Literal["fraction", "test"] = "fraction",
    val_fraction: float = 0.2,
    class_names: list[str] | Literal["digits", "fashion"] | None = None,
    channels: int | list[int] = 1,
    pixels: Literal["uint8", "raw"] = "uint8",
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
    ``channels = 3`` repeats the gray channel. ``pixels = "raw"`` keeps the values as stored (any IDX type: 8/16-bit
    integers, floats; signed and 32-bit integers and float64 become float32) and the channels as stored: ``channels``
    is then the count of the images (1 for ``(N, H, W)``, ``C`` for ``(N, H, W, C)``) or a list of the indices to keep.

    A label outside the class names: ``on_error = "raise"`` stops naming the file and index, ``"skip"`` drops it
    and counts it in the split's ``skipped``.
    """
    import numpy as np

    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.decode import channel_count
    from plugtrain.plugins.datasets.splits import ArraySplit, split_indices

    check_common(on_error, channels, pixels)
    if val_split not in ("fraction", "test"):
        raise error(f"idx dataset: val_split must be 'fraction' or 'test', not {val_split!r}")
    if val_split == "fraction":
        check_fraction(val_fraction, f"idx dataset '{root}'")
    root = existing_dir(root, "IDX dataset root")

    def load(images_name: str, labels_name: str, required: bool):
        images_path = _find_idx(root, images_name, required)
        labels_path = _find_idx(root, labels_name, required)
        if images_path is None or labels_path is None:
            if images_path or labels_path:
                raise error(
                    f"'{images_path or labels_path}' has no matching {'labels' if images_path else 'images'}"
                    f" file ('{labels_name if images_path else images_name}') in '{root}'"
                )
            return None
        images = read_idx(images_path)
        if pixels == "raw":
            _check_raw(images_path, images, channels)
        elif images.dtype != np.uint8 or len(images.shape) not in (3, 4):
            raise error(
                f"IDX file '{images_path}' holds {images.dtype} data of shape {images.shape}; images must be "
                "unsigned bytes of shape (N, H, W) or (N, H, W, C)"
            )
        if pixels != "raw" and len(images.shape) == 4 and images.shape[3] not in (1, 3):
            raise error(f"IDX file '{images_path}' has {images.shape[3]} channels; 1 or 3 expected")
        labels = np.asarray(read_idx(labels_path)[:])
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise error(
                f"IDX file '{labels_path}' holds {labels.dtype} data of shape {labels.shape}; labels must be "
                "integers of shape (N,)"
            )
        if len(labels) != images.shape[0]:
            raise error(f"'{images_path}' holds {images.shape[0]} images but '{labels_path}' {len(labels)} labels")
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
        raise error(f"idx dataset: class_names must be a list, 'digits' or 'fashion', not {class_names!r}")
    else:
        names = [str(c) for c in class_names]

    def valid(part, name: str):
        images, labels, labels_path = part
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if len(bad) and on_error == "raise":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise error(
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
            test[0], test[1], val_keep, channels=channels, pixels=pixels, skipped=val_skipped, problems=val_problems,
            source=test[2],
        )
        test_split = None
    else:
        tr, va = split_indices(train[1][train_keep], val_fraction, seed)
        tr_idx = train_keep[tr]
        val_part = ArraySplit(train[0], train[1], train_keep[va], channels=channels, pixels=pixels, source=train[2])
        test_split = None
        if test is not None:
            test_keep, test_skipped, test_problems = valid(test, "test")
            test_split = ArraySplit(
                test[0],
                test[1],
                test_keep,
                channels=channels, pixels=pixels,
                skipped=test_skipped,
                problems=test_problems,
                source=test[2],
            )
    train_split = ArraySplit(
        train[0], train[1], tr_idx, channels=channels, pixels=pixels, skipped=train_skipped, problems=train_problems,
        source=train[2],
    )
    for split, name in ((train_split, "train"), (val_part, "val")):
        if len(split) == 0:
            raise error(f"idx dataset '{root}': no usable samples for the {name} split")
    return DatasetSplits(train=train_split, val=val_part, test=test_split, class_names=names,
                         in_chans=channel_count(channels), task="classification")


def read_image(path: str | os.PathLike[str], *, in_chans: int, params: Mapping[str, Any] | None = None) -> Any:
    """One image file as an IDX sample comes out: its pixels as stored (one channel when all three are equal), then
    the dataset's conversion to ``in_chans`` channels (grey repeated, or colour reduced to luma)."""
    import numpy as np

    from plugtrain.plugins.datasets.common import param
    from plugtrain.plugins.datasets.decode import read_image_file
    from plugtrain.plugins.datasets.splits import convert_channels

    if param(idx, params, "pixels") == "raw":
        return read_image_file(path, param(idx, params, "channels"), "pil", "raw")
    image = read_image_file(path, 3)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        image = np.ascontiguousarray(image[..., :1])
    return convert_channels(image, in_chans)


idx.read_image = read_image
