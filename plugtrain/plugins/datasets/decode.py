"""The one image decoder of the built-in datasets: image files into ``HxWxC`` uint8 arrays.

:func:`decode_image` is the one entry point (``plugtrain predict`` reaches it through the datasets' ``read_image``);
:func:`decode_bytes` decodes the bytes of an image file (a webdataset shard's member) to the very same pixels, and
:func:`image_size` reads the size from the header only (the decoded-sample cache lays out its file with it).
Decoding never returns a partial or garbage image: a missing, unreadable, zero-byte, truncated or corrupt file
raises :class:`plugtrain.core.data.SampleError` with the path and a precise reason, which the runtime turns into an
error naming the file (``data.on_error = "raise"``) or a skipped sample.

Channel handling, whatever the file holds:

* ``channels=3``: grayscale (``L``, ``1``, 16-bit), palette, ``RGBA``/``LA`` (alpha dropped), ``CMYK`` and ``YCbCr``
  images become RGB, so a grayscale image inside an RGB data set is converted, not an error.
* ``channels=1``: colour images become luma (ITU-R 601-2, Pillow's ``convert("L")``).
* 16-bit images are scaled to 8 bits by dropping the low byte (``>> 8``); 32-bit integer images are read as 16-bit
  data; float images are clipped to 0..255.

The EXIF orientation tag is not applied (as in torchvision and timm): pixels come out as stored.

Pillow is the default decoder because it detects truncated files. A complete 8-bit grey/RGB/RGBA PNG read as RGB is
handed to OpenCV, which is faster and, PNG being lossless, bit-identical (:func:`_decode_png_fast`). OpenCV for
every format (``decoder="cv2"``) is faster still but decodes a truncated JPEG partially (grey bottom rows) instead of
failing; when OpenCV cannot read a file at all, Pillow is asked, so the reason in the error is Pillow's.
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
from plugtrain.core.errors import PlugtrainError

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
    """Pillow's RGB result for a complete 8-bit grey / RGB / RGBA PNG, decoded by OpenCV (faster); ``None`` for
    anything else, which Pillow then decodes or explains.

    PNG is lossless, so both decoders give the same pixels (alpha dropped, grey replicated, as ``convert("RGB")``
    does). Strictness is kept by reading the file first: it must start with the PNG signature and an ``IHDR`` that
    says 8 bits per sample, and end with the ``IEND`` chunk, so a truncated file goes to Pillow, which refuses it;
    libpng checks the chunk CRCs, so a corrupt one fails here and goes to Pillow too. Images larger than Pillow's
    decompression-bomb limit go to Pillow as well (it raises)."""
    try:
        import cv2  # noqa: F401
    except ImportError:  # pragma: no cover - albumentations brings OpenCV
        return None
    _check_file(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return _png_fast_buffer(buf)


def _png_fast_buffer(buf: np.ndarray) -> np.ndarray | None:
    """:func:`_decode_png_fast` on the bytes of a file (a uint8 array)."""
    import cv2
    from PIL import Image

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
    _check_file(path)
    return _decode_pil_source(path, path, channels)


def _decode_pil_source(source: Any, path: str, channels: int) -> np.ndarray:
    """Pillow's decode of ``source`` (a path or a binary file object); faults name ``path``."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
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
    return _cv2_result(image, channels)


def _cv2_result(image: Any, channels: int) -> np.ndarray | None:
    import cv2

    if image is None or image.size == 0:
        return None
    if image.dtype != np.uint8:
        return None
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[..., None])


def _decode_cv2_buffer(buf: np.ndarray, channels: int) -> np.ndarray | None:
    import cv2

    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error:
        return None
    finally:
        logging.setLogLevel(level)
    return _cv2_result(image, channels)


def decode_bytes(data: bytes | bytearray | memoryview | np.ndarray, name: str, channels: int = 3,
                 decoder: str = "pil") -> np.ndarray:
    """:func:`decode_image` of the bytes of an image file: the same pixels as decoding a file named ``name`` (its
    extension picks the PNG fast path, as a path's does) holding ``data``; faults raise :class:`SampleError` naming
    ``name`` (a webdataset sample, ``shard.tar:key.png``)."""
    import io

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise SampleError(name, "empty file (0 bytes)")
    if decoder == "cv2":
        image = _decode_cv2_buffer(buf, channels)
        if image is not None:
            return image
    elif channels == 3 and name[-4:].lower() == ".png":
        image = _png_fast_buffer(buf)
        if image is not None:
            return image
    return _decode_pil_source(io.BytesIO(buf.tobytes()), name, channels)


def image_size(source: str | os.PathLike[str] | bytes) -> tuple[int, int] | None:
    """``(height, width)`` of an image file (a path, or its first bytes) from its header, without decoding it;
    ``None`` when Pillow cannot read the header. The pixels :func:`decode_image` returns have this size (EXIF
    orientation is not applied)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
            with Image.open(src) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 - any unreadable header: the sample is then decoded every time
        return None
    return (int(height), int(width)) if width > 0 and height > 0 else None


def read_image_file(path: str | os.PathLike[str], channels: int, decoder: str = "pil") -> np.ndarray:
    """:func:`decode_image` for a file named by the user (``plugtrain predict``): any fault is a PlugtrainError with
    one line naming the path."""
    try:
        return decode_image(path, channels, decoder)
    except SampleError as exc:
        raise PlugtrainError(f"{exc.path}: {_one_line(exc.reason)}") from None
    except ValueError as exc:
        raise PlugtrainError(f"{os.fspath(path)}: {_one_line(str(exc))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
