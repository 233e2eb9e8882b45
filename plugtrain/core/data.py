"""What a dataset plugin returns, and the torch Dataset that applies augmentations in DataLoader workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs


@attrs.define
class DatasetSplits:
    """The splits a dataset plugin provides.

    Each split is a sequence (``__len__`` and ``__getitem__``) of ``(image, target)`` samples, with ``image`` an
    ``HxWxC`` numpy array (decoded lazily: decoding belongs in ``__getitem__`` so it runs in DataLoader workers):
    uint8, or for a split whose ``pixels`` attribute is ``"raw"`` the values as stored (uint16, float32); ``target``
    is what the dataset's ``task`` word says: ``None`` (unset) is an int class index; others name their own (a float
    or float vector, a list of labels, a mask), and a run's task (:class:`plugtrain.core.hookspecs.Task`) lists the
    words it trains on in ``dataset_tasks``. ``targets`` (optional) lists every sample's target without decoding
    images — samplers use it.
    """

    train: Sequence[Any]
    val: Sequence[Any]
    test: Sequence[Any] | None = None
    class_names: list[str] = attrs.Factory(list)
    in_chans: int = 3
    task: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SampleError(Exception):
    """A sample that cannot be used (corrupt or zero-byte image, missing file, label out of range).

    Dataset splits raise it from ``__getitem__`` (or while indexing files). The runtime turns it into a clear error
    naming the file when ``data.on_error = "raise"``, or skips the sample and counts it when ``"skip"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable, so that it crosses DataLoader worker boundaries intact
        return (SampleError, (self.path, self.reason))
