"""A benchmark-only plugtrain plugin: synthetic in-memory datasets and a tiny CNN.

It is registered exactly as an installed plugin is (a ``*.dist-info`` on ``sys.path`` whose ``entry_points.txt``
names this module under the ``plugtrain`` group, see :func:`_common.install_plugin`), so that a spec can name its
components and the runtime builds them through the registry. The bare reference loops call the same functions
(:func:`synthetic_arrays`, :func:`tiny_cnn`) directly, so both sides train the same model on the same data.

Like every plugin, it imports no heavy library at module level.
"""

from __future__ import annotations

from typing import Any

from plugtrain import Component, hookimpl


def synthetic_arrays(n: int, size: int, channels: int, num_classes: int, seed: int, dtype: str = "uint8"):
    """``(images NxHxWxC, targets N)``: random uint8 pixels, or (``dtype = "float32"``) those normalised with
    mean = std = 0.5 (what ``augmentations.normalize`` does), i.e. the tensors of an in-memory data set."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    targets = rng.integers(0, num_classes, size=n).astype(np.int64)
    if dtype == "float32":
        images = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    elif dtype != "uint8":
        raise ValueError(f"dtype must be 'uint8' or 'float32', not {dtype!r}")
    return images, targets


class MemorySplit:
    """A split over in-memory arrays: ``split[i]`` is ``(image HxWxC, int target)`` (a view, never a copy)."""

    def __init__(self, images: Any, targets: Any) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.images[i], self.targets[i]


class ZerosSplit:
    """``n`` black images made on demand (nothing held in memory): for benchmarks that feed the model themselves."""

    def __init__(self, n: int, size: int, channels: int, num_classes: int) -> None:
        self.n, self.size, self.channels, self.num_classes = n, size, channels, num_classes
        self.targets = [i % num_classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np

        return np.zeros((self.size, self.size, self.channels), dtype=np.uint8), self.targets[i]


def bench_tensors(n_train: int = 2048, n_val: int = 256, size: int = 32, channels: int = 3, num_classes: int = 10,
                  dtype: str = "uint8", data_seed: int = 1234):
    """Synthetic images held in memory (train from ``data_seed``, val from ``data_seed + 1``)."""
    from plugtrain.core.data import DatasetSplits

    train = synthetic_arrays(n_train, size, channels, num_classes, data_seed, dtype)
    val = synthetic_arrays(n_val, size, channels, num_classes, data_seed + 1, dtype)
    return DatasetSplits(train=MemorySplit(*train), val=MemorySplit(*val),
                         class_names=[str(c) for c in range(num_classes)], in_chans=channels)


def bench_zeros(n_train: int = 2048, n_val: int = 16, size: int = 224, channels: int = 3, num_classes: int = 1000):
    """Black images made on demand (the GPU benchmark replaces the training batches by device tensors)."""
    from plugtrain.core.data import DatasetSplits

    return DatasetSplits(train=ZerosSplit(n_train, size, channels, num_classes),
                         val=ZerosSplit(n_val, size, channels, num_classes),
                         class_names=[str(c) for c in range(num_classes)], in_chans=channels)


def tiny_cnn(num_classes: int = 10, in_chans: int = 3, width: int = 32):
    """Three conv-BN-ReLU blocks (the last two with stride 2), global average pooling, a linear head."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(in_chans, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


@hookimpl
def plugtrain_datasets():
    return [
        Component("bench-tensors", bench_tensors, summary="Benchmarks: synthetic images held in memory."),
        Component("bench-zeros", bench_zeros, summary="Benchmarks: black images made on demand."),
    ]


@hookimpl
def plugtrain_backbones():
    return [Component("bench-tiny-cnn", tiny_cnn, summary="Benchmarks: a three-layer CNN.")]
