"""Decoding image files into ``HxWxC`` uint8 arrays: shared by the file-based datasets and ``plugtrain predict``.

:func:`decode_image` is the one entry point. It never returns a partial or garbage image: a missing, unreadable,
zero-byte, truncated or corrupt file raises :class:`plugtrain.core.data.SampleError` with the path and a precise
reason, which the runtime turns into an error naming the file (``data.on_error = "raise"``) or a skipped sample.

Channel handling, whatever the file holds:

* ``channels=3``: grayscale (``L``, ``1``, 16-bit), palette, ``RGBA``/``LA`` (alpha dropped), ``CMYK`` and ``YCbCr``
  images become RGB, so a grayscale image inside an RGB data set is converted, not an error.
* ``channels=1``: colour images become luma (ITU-R 601-2, Pillow's ``convert("L")``).
* 16-bit images are scaled to 8 bits by dropping the low byte (``>> 8``); 32-bit integer images are read as 16-bit
  data; float images are clipped to 0..255.

The EXIF orientation tag is not applied (as in torchvision and timm): pixels come out as stored.

Pillow is the default decoder: it detects truncated files. (For a complete 8-bit grey/RGB/RGBA PNG read as RGB the
default hands the decode to OpenCV, about 1.5x faster and, PNG being lossless, bit-identical; see
:func:`_decode_png_fast`.) OpenCV (``decoder="cv2"``) is 15-60% faster on small
images but decodes a truncated JPEG partially (grey bottom rows) instead of failing; when OpenCV cannot read a file
at all, Pillow is asked, so the reason in the error is Pillow's.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from plugtrain.core.data import SampleError

#: File extensions (lower case) the folder datasets treat as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

DECODERS: tuple[str, ...] = ("pil", "cv2")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def is_image_file(name: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    """True for a file name with one of ``extensions`` (case-insensitive) that is not hidden (``.x``, ``._x.jpg``)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(tuple(e.lower() for e in extensions))


def iter_image_files(folder: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Iterator[str]:
    """The image files under ``folder`` (recursively, following links), in sorted order, as paths joined to ``folder``.

    Hidden files and folders (names starting with ``.``) are left out; so are files with other extensions. Only
    directory entries are read (no ``stat`` per file), so indexing a million files stays fast.
    """
    exts = tuple(e.lower() for e in extensions)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            yield from iter_image_files(entry.path, exts)
        elif entry.name.lower().endswith(exts):
            yield entry.path


def decode_image(path: str | os.PathLike[str], channels: int = 3, decoder: str = "pil") -> np.ndarray:
    """Decode the image file at ``path`` into a contiguous ``HxWxC`` uint8 array with ``C == channels`` (1 or 3).

    Raises :class:`SampleError` (``.path``, ``.reason``) when the file is missing, unreadable, empty, truncated,
    corrupt or not an image; ``ValueError`` for a ``channels`` or ``decoder`` plugtrain does not know.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    path = os.fspath(path)
    if decoder == "cv2":
        image = _decode_cv2(path, channels)
        if image is not None:
            return image
    elif channels == 3 and path[-4:].lower() == ".png":
        image = _decode_png_fast(path)
        if image is not None:
            return image
    return _decode_pil(path, channels)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _decode_png_fast(path: str) -> np.ndarray | None:
    """Pillow's RGB result for a complete 8-bit grey / RGB / RGBA PNG, decoded by OpenCV (about 1.5x faster on
    small images); ``None`` for anything else, which Pillow then decodes or explains.

    PNG is lossless, so both decoders give the same pixels (alpha dropped, grey replicated, as ``convert("RGB")``
    does). Strictness is kept by reading the file first: it must start with the PNG signature and an ``IHDR`` that
    says 8 bits per sample, and end with the ``IEND`` chunk, so a truncated file goes to Pillow, which refuses it;
    libpng checks the chunk CRCs, so a corrupt one fails here and goes to Pillow too. Images larger than Pillow's
    decompression-bomb limit go to Pillow as well (it raises)."""
    try:
        import cv2
        from PIL import Image
    except ImportError:  # pragma: no cover - albumentations brings OpenCV
        return None
    _check_file(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    head = buf[:26].tobytes()
    if (len(buf) < 57 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24] != 8
            or head[25] not in (0, 2, 6) or buf[-12:].tobytes() != _PNG_IEND):
        return None
    width, height = struct.unpack(">II", head[16:24])
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return None
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != (height, width):
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _file_fault(path: str, exc: OSError) -> SampleError:
    if exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError):
        return SampleError(path, "file not found")
    if exc.errno == errno.EACCES or isinstance(exc, PermissionError):
        return SampleError(path, "cannot read the file: permission denied")
    if exc.errno == errno.EISDIR or isinstance(exc, IsADirectoryError):
        return SampleError(path, "is a directory, not an image file")
    return SampleError(path, f"cannot read the file: {exc.strerror or exc}")


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _file_fault(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise SampleError(path, "is a directory, not an image file")
    if st.st_size == 0:
        raise SampleError(path, "empty file (0 bytes)")


def _decode_pil(path: str, channels: int) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                array = _pil_to_array(img, channels)
    except SampleError:
        raise
    except UnidentifiedImageError:
        raise SampleError(path, "not a readable image (corrupt, or a format Pillow does not know)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise SampleError(path, f"image too large to decode safely: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:
            raise _file_fault(path, exc) from None
        raise SampleError(path, f"corrupt or truncated image data: {exc}") from None
    except (ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError) as exc:
        # Pillow's plugins raise these on malformed headers.
        raise SampleError(path, f"corrupt image data: {exc or type(exc).__name__}") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise SampleError(path, f"decoded to an empty image of shape {tuple(array.shape)}")
    return array


def _pil_to_array(img: Any, channels: int) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        data = np.asarray(img)
        if mode == "F":
            gray = np.clip(data, 0, 255).astype(np.uint8)
        else:
            gray = (np.clip(data.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        gray = gray[..., None]
        return np.ascontiguousarray(np.repeat(gray, 3, axis=2)) if channels == 3 else np.ascontiguousarray(gray)
    target = "RGB" if channels == 3 else "L"
    if mode != target:
        if mode in ("P", "PA") and channels == 3:
            img = img.convert("RGBA")  # palette transparency: avoids Pillow's warning, alpha dropped below
        img = img.convert(target)
    else:
        img.load()
    array = np.asarray(img)
    if channels == 1:
        array = array[..., None]
    return np.ascontiguousarray(array)


def _decode_cv2(path: str, channels: int) -> np.ndarray | None:
    """OpenCV's decode, or None when OpenCV cannot read the file (then Pillow decodes it or explains why not)."""
    import cv2

    _check_file(path)
    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)  # the reason comes from Pillow, not from OpenCV's stderr
    try:
        image = cv2.imread(path, flags)
    except cv2.error:
        return None
    finally:
        logging.setLogLevel(level)
    if image is None or image.size == 0:
        return None
    if image.dtype != np.uint8:
        return None
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[..., None])


# --------------------------------------------------------------------------------------------------------------------
# Sample sequences: what the built-in datasets return as splits
# --------------------------------------------------------------------------------------------------------------------


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

    def _target_list(self) -> list[Any]:
        raise NotImplementedError

    @property
    def targets(self) -> list[Any]:
        return self._target_list()

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        for i in range(len(self)):  # type: ignore[arg-type]
            yield self[i]  # type: ignore[index]


def _targets_array(targets: Any, task: str) -> np.ndarray:
    if task == "regression":
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
    ) -> None:
        self._paths = paths if isinstance(paths, PathTable) else PathTable(paths)
        self._targets = targets if isinstance(targets, np.ndarray) else _targets_array(targets, task)
        if len(self._targets) != len(self._paths):
            raise ValueError(f"{len(self._paths)} paths but {len(self._targets)} targets")
        self._vector = self._targets.ndim == 2 and self._targets.shape[1] > 1
        self.channels = channels
        self.decoder = decoder
        self.task = task
        self.skipped = skipped
        self.problems = list(problems)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        i = _normalise_index(i, len(self._paths))
        return decode_image(self._paths[i], self.channels, self.decoder), _target_at(self._targets, i, self._vector)

    def path(self, i: int) -> str:
        """The file of sample ``i`` (for messages)."""
        return self._paths[_normalise_index(i, len(self._paths))]

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    def _target_list(self) -> list[Any]:
        return _target_list(self._targets, self._vector)

    def subset(self, indices: Iterable[int]) -> ImageFileSplit:
        """A split of the samples at ``indices`` (in that order); ``skipped`` and ``problems`` carry over."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return ImageFileSplit(
            self._paths.take(idx),
            self._targets[idx],
            channels=self.channels,
            decoder=self.decoder,
            task=self.task,
            skipped=self.skipped,
            problems=self.problems,
        )

    def __repr__(self) -> str:
        return f"ImageFileSplit({len(self)} files, channels={self.channels}, task={self.task!r})"


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
        channels: int | None = None,
        skipped: int = 0,
        problems: Iterable[tuple[str, str]] = (),
        source: str = "",
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

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        j = int(self._indices[_normalise_index(i, len(self._indices))])
        image = np.array(self._images[j], dtype=np.uint8, copy=True)
        if image.ndim == 2:
            image = image[..., None]
        if self.channels == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        elif self.channels == 1 and image.shape[2] == 3:
            luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            image = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
        return image, int(self._all_targets[j])

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
        )

    def __repr__(self) -> str:
        return f"ArraySplit({len(self)} images{', ' + self.source if self.source else ''})"


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
