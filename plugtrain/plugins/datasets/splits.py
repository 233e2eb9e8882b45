"""The sample sequences the built-in datasets return as splits, and the seeded train/val split of indices."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from plugtrain.plugins.datasets.decode import decode_image, image_size


class PathTable:
    """An immutable list of strings packed into one numpy byte buffer plus offsets.

    A plain list of a million ``str`` objects is touched (reference counts) by every DataLoader worker that reads
    it, which copies the pages of forked workers one by one until each holds its own copy; two numpy arrays are
    never written, so forked workers share them. Non-UTF-8 file names survive (``surrogateescape``).
    """

    __slots__ = ("_buffer", "_offsets")

    def __init__(self, strings: Iterable[str] = ()) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = self._offsets[i], self._offsets[i + 1]
        return self._buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Iterable[int]) -> PathTable:
        return PathTable(self[int(i)] for i in indices)

    def __getstate__(self) -> tuple[np.ndarray, np.ndarray]:
        return self._buffer, self._offsets

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self._buffer, self._offsets = state


def _normalise_index(i: Any, n: int) -> int:
    i = int(i) if isinstance(i, (int, np.integer)) else i
    if not isinstance(i, int):
        raise TypeError(f"sample indices must be integers, not {type(i).__name__}")
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"sample index {i} out of range for a split of {n}")
    return i


class _SplitBase:
    """What every built-in split offers besides ``__len__``/``__getitem__``.

    * ``targets``: every sample's target as a list, without decoding images (for samplers).
    * ``skipped``: how many samples were dropped while indexing because ``on_error = "skip"`` (missing files,
      labels out of range, unreadable manifest rows); 0 with ``"raise"``.
    * ``problems``: ``(where, what)`` pairs for everything dropped or noticed while indexing (a skipped manifest row,
      an empty class folder kept with no samples): the runtime prints them once.
    """

    skipped: int
    problems: list[tuple[str, str]]
    #: the decoded-sample cache (:class:`plugtrain.plugins.datasets.cache.DecodedCache`) of a file split, or None
    cache: Any = None

    def _target_list(self) -> list[Any]:
        raise NotImplementedError

    @property
    def targets(self) -> list[Any]:
        return self._target_list()

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        for i in range(len(self)):  # type: ignore[arg-type]
            yield self[i]  # type: ignore[index]


def _targets_array(targets: Any, task: str) -> np.ndarray:
    if task in ("regression", "multilabel"):  # float vectors (multi-label: multi-hot)
        arr = np.asarray(targets, dtype=np.float32)
        return arr.reshape(len(arr), -1) if arr.ndim != 2 else arr
    return np.asarray(targets, dtype=np.int64).reshape(-1)


def _target_at(targets: np.ndarray, i: int, vector: bool) -> Any:
    if targets.dtype == np.int64:
        return int(targets[i])
    if vector:
        return targets[i].copy()
    return float(targets[i, 0])


def _target_list(targets: np.ndarray, vector: bool) -> list[Any]:
    if targets.dtype == np.int64:
        return targets.tolist()
    if vector:
        return list(targets.copy())
    return targets[:, 0].tolist()


class ImageFileSplit(_SplitBase):
    """A split of image files decoded lazily, in ``__getitem__`` (so in DataLoader workers): nothing is decoded or
    held in memory but the paths and targets.

    ``split[i]`` is ``(image, target)``: ``image`` an ``HxWxC`` uint8 array with ``C == channels``; ``target`` an
    ``int`` class index (``task="classification"``), a ``float`` (regression with one target) or a float32 vector
    (regression with several). A file that cannot be decoded raises :class:`SampleError` naming it.
    """

    def __init__(
        self,
        paths: Iterable[str],
        targets: Any,
        *,
        channels: int = 3,
        decoder: str = "pil",
        task: str = "classification",
        skipped: int = 0,
        problems: Iterable[tuple[str, str]] = (),
        pixels: str = "uint8",
        npy_layout: str = "HWC",
    ) -> None:
        self._paths = paths if isinstance(paths, PathTable) else PathTable(paths)
        self._targets = targets if isinstance(targets, np.ndarray) else _targets_array(targets, task)
        if len(self._targets) != len(self._paths):
            raise ValueError(f"{len(self._paths)} paths but {len(self._targets)} targets")
        self._vector = self._targets.ndim == 2 and (self._targets.shape[1] > 1 or task == "multilabel")
        self.channels = channels
        self.decoder = decoder
        self.task = task
        self.skipped = skipped
        self.problems = list(problems)
        self.pixels, self.npy_layout = pixels, npy_layout  # "raw": pixels as stored (any dtype and channel count)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        i = _normalise_index(i, len(self._paths))
        cache = self.cache
        image = cache.read(i) if cache is not None else None
        if image is None:
            image = decode_image(self._paths[i], self.channels, self.decoder, self.pixels, self.npy_layout)
            if cache is not None:
                cache.write(i, image)
        return image, _target_at(self._targets, i, self._vector)

    def cache_entries(self) -> Iterator[str]:
        """One identity per sample for the cache's key: the file's path, size and modification time."""
        for p in self._paths:
            try:
                st = os.stat(p)
                yield f"{p}\0{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                yield f"{p}\0-1"

    def cache_shape(self, i: int) -> tuple[int, int] | None:
        """``(height, width)`` of sample ``i`` from its file's header (the cache's layout), or None."""
        if self.pixels == "raw":
            from plugtrain.plugins.datasets.decode import raw_size

            return raw_size(self._paths[i], self.npy_layout)
        return image_size(self._paths[i])

    def cache_dtype(self) -> str:
        """The dtype of the decoded pixels (the cache's slots): uint8, or with raw pixels the first readable file's."""
        if self.pixels == "raw":
            for i in range(min(len(self), 16)):
                fmt = self.pixel_format(i)
                if fmt is not None:
                    return fmt[0]
        return "uint8"

    def path(self, i: int) -> str:
        """The file of sample ``i`` (for messages)."""
        return self._paths[_normalise_index(i, len(self._paths))]

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    def _target_list(self) -> list[Any]:
        return _target_list(self._targets, self._vector)

    def subset(self, indices: Iterable[int]) -> ImageFileSplit:
        """A split of the samples at ``indices`` (in that order); ``skipped`` and ``problems`` carry over (the
        cache does not: its slots are this split's)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return ImageFileSplit(
            self._paths.take(idx),
            self._targets[idx],
            channels=self.channels,
            decoder=self.decoder,
            task=self.task,
            skipped=self.skipped,
            problems=self.problems,
            pixels=self.pixels,
            npy_layout=self.npy_layout,
        )

    def pixel_format(self, i: int) -> tuple[str, int] | None:
        """``(dtype, channels)`` of sample ``i`` as decoded, from its file's header (None: unknown without decoding;
        8-bit samples are always ``uint8`` of ``channels``)."""
        if self.pixels != "raw":
            return "uint8", int(self.channels)
        from plugtrain.plugins.datasets.decode import raw_format

        return raw_format(self._paths[i], self.npy_layout)

    def __repr__(self) -> str:
        cached = f", cache={self.cache.mode}" if self.cache is not None else ""
        return f"ImageFileSplit({len(self)} files, channels={self.channels}, task={self.task!r}{cached})"


class LazyMemmap:
    """A read-only ``np.memmap`` of a file region, opened on first access and reopened (not copied) when pickled
    into a spawned DataLoader worker."""

    def __init__(self, path: str, dtype: Any, shape: tuple[int, ...], offset: int) -> None:
        self.path, self.dtype, self.shape, self.offset = path, np.dtype(dtype), tuple(shape), int(offset)
        self._map: np.memmap | None = None

    def _array(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        return self._map

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._array()[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class ArraySplit(_SplitBase):
    """A split over an in-memory (or memory-mapped) array of images ``(N, H, W)`` or ``(N, H, W, C)``.

    ``split[i]`` is ``(image, int target)`` with ``image`` a fresh writable ``HxWxC`` uint8 array; ``channels=3``
    repeats a single channel three times.
    """

    def __init__(
        self,
        images: Any,
        targets: Any,
        indices: Iterable[int] | None = None,
        *,
        channels: int | list[int] | None = None,
        skipped: int = 0,
        problems: Iterable[tuple[str, str]] = (),
        source: str = "",
        pixels: str = "uint8",
    ) -> None:
        self._images = images
        self._all_targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        self._indices = (
            np.arange(len(self._all_targets), dtype=np.int64)
            if indices is None
            else np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        )
        self.channels = channels
        self.skipped = skipped
        self.problems = list(problems)
        self.source = source
        self.pixels = pixels  # "raw": values and channels as stored (decode.as_raw_dtype, decode.select_channels)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        j = int(self._indices[_normalise_index(i, len(self._indices))])
        if self.pixels == "raw":
            from plugtrain.plugins.datasets.decode import as_raw_dtype, select_channels

            where = f"{self.source}[{j}]"
            image = select_channels(as_raw_dtype(np.array(self._images[j], copy=True), where), self.channels, where)
            return image, int(self._all_targets[j])
        image = np.array(self._images[j], dtype=np.uint8, copy=True)
        return convert_channels(image, self.channels), int(self._all_targets[j])

    def _target_list(self) -> list[int]:
        return self._all_targets[self._indices].tolist()

    def subset(self, indices: Iterable[int]) -> ArraySplit:
        idx = np.asarray(list(indices), dtype=np.int64)
        return ArraySplit(
            self._images,
            self._all_targets,
            self._indices[idx],
            channels=self.channels,
            skipped=self.skipped,
            problems=self.problems,
            source=self.source,
            pixels=self.pixels,
        )

    def __repr__(self) -> str:
        return f"ArraySplit({len(self)} images{', ' + self.source if self.source else ''})"


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """An ``HxW`` or ``HxWxC`` uint8 array as ``HxWxchannels``: one channel repeated to three, or three reduced to
    their luma (ITU-R 601-2, rounded); ``channels=None`` keeps the channels as they are."""
    if image.ndim == 2:
        image = image[..., None]
    if channels == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 1 and image.shape[2] == 3:
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        image = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    return image


def split_indices(targets: Any, fraction: float, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(targets))`` into sorted ``(train, val)`` index arrays, ``val`` about ``fraction`` of them.

    Deterministic for a given ``seed`` and target list. With ``stratify`` every class keeps its share in both parts:
    ``round(N * fraction)`` validation samples are allotted to classes in proportion to their size (largest
    remainders first, preferring classes that keep a training sample), and a class's validation samples are drawn at
    random within it.
    """
    targets = np.asarray(targets)
    n = len(targets)
    rng = np.random.default_rng(seed)
    n_val = int(round(n * fraction))
    n_val = min(max(n_val, 1 if fraction > 0 and n > 1 else 0), max(n - 1, 0))
    if not stratify:
        perm = rng.permutation(n)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    quota = counts * (n_val / n if n else 0.0)
    take = np.floor(quota).astype(np.int64)
    left = n_val - int(take.sum())
    if left > 0:
        # Largest remainders first, among classes that would still keep a training sample; then the others.
        keeps = (counts - take) >= 2
        order = sorted(range(len(classes)), key=lambda c: (not keeps[c], -(quota[c] - take[c]), c))
        for c in order:
            if left == 0:
                break
            if take[c] < counts[c]:
                take[c] += 1
                left -= 1
    val_parts = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        val_parts.append(rng.permutation(members)[: take[c]])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val.astype(np.int64)
