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

With ``pixels="raw"`` (:func:`decode_raw`) nothing is converted: the pixels come out as stored, ``uint8``,
``uint16`` or ``float32`` (other integer and float types become ``float32``), with every channel the file holds —
multi-page and multi-channel TIFF through ``tifffile``, ``.npy`` arrays (``HxWxC`` or ``CxHxW``), other formats
through Pillow — then the channels the data set asks for are checked (a count) or picked (a list of indices).

The EXIF orientation tag is not applied (as in torchvision and timm): pixels come out as stored.

Pillow is the default decoder because it detects truncated files. A complete 8-bit grey/RGB/RGBA PNG read as RGB is
handed to OpenCV, which is faster and, PNG being lossless, bit-identical (:func:`_decode_png_fast`). OpenCV for
every format (``decoder="cv2"``) is faster still but decodes a truncated JPEG partially (grey bottom rows) instead of
failing; when OpenCV cannot read a file at all, Pillow is asked, so the reason in the error is Pillow's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from plugtrain.core.console import quiet_logger
from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError

DECODERS: tuple[str, ...] = ("pil", "cv2")
#: ``pixels``: ``uint8`` converts every image to 8-bit grey or RGB (the default); ``raw`` keeps them as stored.
PIXELS: tuple[str, ...] = ("uint8", "raw")
#: ``npy_layout``: how a ``.npy`` array of three dimensions is laid out.
NPY_LAYOUTS: tuple[str, ...] = ("HWC", "CHW")
#: The dtypes a raw image keeps; any other numeric type becomes float32.
RAW_DTYPES: tuple[str, ...] = ("uint8", "uint16", "float32")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(path: str | os.PathLike[str], channels: int | list[int] = 3, decoder: str = "pil",
                 pixels: str = "uint8", npy_layout: str = "HWC") -> np.ndarray:
    """Decode the image file at ``path`` into a contiguous ``HxWxC`` uint8 array with ``C == channels`` (1 or 3), or
    with ``pixels="raw"`` the pixels as stored (:func:`decode_raw`).

    Raises :class:`SampleError` (``.path``, ``.reason``) when the file is missing, unreadable, empty, truncated,
    corrupt or not an image; ``ValueError`` for a ``channels`` or ``decoder`` plugtrain does not know.
    """
    if pixels == "raw":
        path = os.fspath(path)
        _check_file(path)
        return decode_raw(path, path, channels, npy_layout)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    path = os.fspath(path)
    return _decode_8bit(path, channels, decoder, cv2=lambda: _decode_cv2(path, channels),
                        png=lambda: _decode_png_fast(path), pil=lambda: _decode_pil(path, channels))


def _decode_8bit(name: str, channels: int, decoder: str, cv2: Callable[[], np.ndarray | None],
                 png: Callable[[], np.ndarray | None], pil: Callable[[], np.ndarray]) -> np.ndarray:
    """Which decode reads an 8-bit image, the same for a file and for its bytes: OpenCV (``cv2``) with ``decoder =
    "cv2"``, the PNG fast path (``png``) for an RGB ``.png``, and Pillow (``pil``) otherwise and wherever the first
    two give up (None)."""
    if decoder == "cv2":
        image = cv2()
        if image is not None:
            return image
    elif channels == 3 and name[-4:].lower() == ".png":
        image = png()
        if image is not None:
            return image
    return pil()


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
    from PIL import Image

    with _pil_faults(path), Image.open(source) as img:
        array = _pil_to_array(img, channels)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise SampleError(path, f"decoded to an empty image of shape {tuple(array.shape)}")
    return array


@contextlib.contextmanager
def _pil_faults(path: str) -> Iterator[None]:
    """Pillow's faults in the block (opening and decoding an image) as one :class:`SampleError` naming ``path``; a
    decompression-bomb warning is one of them."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
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
    return _cv2_decode(lambda flags: cv2.imread(path, flags), channels)


def _decode_cv2_buffer(buf: np.ndarray, channels: int) -> np.ndarray | None:
    """:func:`_decode_cv2` of a file's bytes."""
    import cv2

    return _cv2_decode(lambda flags: cv2.imdecode(buf, flags), channels)


def _cv2_decode(read: Callable[[int], Any], channels: int) -> np.ndarray | None:
    """``read(flags)`` (``cv2.imread`` or ``cv2.imdecode``) as an 8-bit RGB or one-channel array, or None where
    OpenCV fails. OpenCV's own logging is silenced: the reason comes from Pillow, not from OpenCV's stderr."""
    import cv2

    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        image = read(flags)
    except cv2.error:
        return None
    finally:
        logging.setLogLevel(level)
    if image is None or image.size == 0 or image.dtype != np.uint8:
        return None
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image[..., None])


def decode_bytes(data: bytes | bytearray | memoryview | np.ndarray, name: str, channels: int | list[int] = 3,
                 decoder: str = "pil", pixels: str = "uint8", npy_layout: str = "HWC") -> np.ndarray:
    """:func:`decode_image` of the bytes of an image file: the same pixels as decoding a file named ``name`` (its
    extension picks the PNG fast path, as a path's does) holding ``data``; faults raise :class:`SampleError` naming
    ``name`` (a webdataset sample, ``shard.tar:key.png``)."""
    import io

    if pixels != "raw" and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise SampleError(name, "empty file (0 bytes)")
    if pixels == "raw":
        return decode_raw(io.BytesIO(buf.tobytes()), name, channels, npy_layout)
    return _decode_8bit(name, channels, decoder, cv2=lambda: _decode_cv2_buffer(buf, channels),
                        png=lambda: _png_fast_buffer(buf),
                        pil=lambda: _decode_pil_source(io.BytesIO(buf.tobytes()), name, channels))


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


def read_image_file(path: str | os.PathLike[str], channels: int | list[int], decoder: str = "pil",
                    pixels: str = "uint8", npy_layout: str = "HWC") -> np.ndarray:
    """:func:`decode_image` for a file named by the user (``plugtrain predict``): any fault is a PlugtrainError with
    one line naming the path."""
    try:
        return decode_image(path, channels, decoder, pixels, npy_layout)
    except SampleError as exc:
        raise PlugtrainError(f"{exc.path}: {_one_line(exc.reason)}") from None
    except ValueError as exc:
        raise PlugtrainError(f"{os.fspath(path)}: {_one_line(str(exc))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- pixels as stored ("raw") ------------------------------------------------------------------------------------------
def channel_count(channels: int | list[int]) -> int:
    """How many channels a data set's samples have: ``channels`` itself, or the length of a list of indices."""
    return len(channels) if isinstance(channels, (list, tuple)) else int(channels)


def channels_problem(channels: Any, pixels: str) -> str | None:
    """Why ``channels`` does not fit ``pixels`` (one sentence), or None: ``uint8`` converts to 1 or 3 channels;
    ``raw`` takes any positive count or a non-empty list of distinct channel indices."""
    if isinstance(channels, (list, tuple)):
        if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels):
            return f"channels must be a positive count or a list of channel indices (0, 1, ...), not {channels!r}"
        if len(set(channels)) != len(channels):
            return f"channels lists an index twice: {list(channels)!r}"
    elif isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        return f"channels must be a positive count or a list of channel indices (0, 1, ...), not {channels!r}"
    if pixels == "uint8" and channels not in (1, 3):
        return (f"channels must be 1 or 3 with pixels = \"uint8\" (the default: images converted to grey or RGB), "
                f"not {channels!r}; pixels = \"raw\" keeps them as stored, with any channel count")
    return None


def decode_raw(source: Any, path: str, channels: int | list[int], npy_layout: str = "HWC") -> np.ndarray:
    """The pixels of ``source`` (a path or a binary file object; faults name ``path``) as stored: an ``HxWxC``
    array of ``uint8``, ``uint16`` or ``float32`` (other numeric types become ``float32``), then
    :func:`select_channels`. TIFF (``.tif``/``.tiff``) through ``tifffile``: every page and sample becomes a channel;
    ``.npy`` through ``numpy`` (``npy_layout`` says ``HWC`` or ``CHW``); other formats through Pillow."""
    lower = path.lower()
    if lower.endswith((".tif", ".tiff")):
        array = _read_tiff(source, path)
    elif lower.endswith(".npy"):
        array = _read_npy(source, path, npy_layout)
    else:
        array = _read_pil_raw(source, path)
    return select_channels(as_raw_dtype(array, path), channels, path)


def as_raw_dtype(array: np.ndarray, path: str) -> np.ndarray:
    """``array`` as ``HxWxC`` of a kept dtype (``uint8``, ``uint16``, ``float32``; bool becomes ``uint8``, any other
    number ``float32``), native byte order, contiguous."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise SampleError(path, f"decoded to an array of shape {tuple(array.shape)}, not an HxWxC image")
    kind = array.dtype.kind
    if kind == "b":
        array = array.astype(np.uint8)
    elif kind not in "uif":
        raise SampleError(path, f"holds {array.dtype} values, not numbers")
    elif array.dtype.name not in RAW_DTYPES or not array.dtype.isnative:
        name = array.dtype.newbyteorder("=").name
        array = array.astype(name if name in RAW_DTYPES else np.float32)
    return np.ascontiguousarray(array)


def select_channels(image: np.ndarray, channels: int | list[int], path: str) -> np.ndarray:
    """``image`` (``HxWxC``) with the channels the data set asks for: a count must equal ``C``; a list picks those
    channel indices in that order. A file that does not fit is a :class:`SampleError` naming it."""
    have = image.shape[2]
    if isinstance(channels, (list, tuple)):
        if max(channels) >= have:
            raise SampleError(path, f"has {have} channel(s) but channels = {list(channels)} asks for index "
                                    f"{max(channels)}")
        return np.ascontiguousarray(image[..., list(channels)])
    if have != channels:
        raise SampleError(path, f"has {have} channel(s) but the data set's channels = {channels}")
    return image


def _read_tiff(source: Any, path: str) -> np.ndarray:
    import tifffile

    try:
        with quiet_logger("tifffile"), tifffile.TiffFile(source) as tif:
            if not tif.series:
                raise SampleError(path, "not a readable TIFF file: it holds no image (corrupt or truncated)")
            series = tif.series[0]
            axes = series.axes
            array = series.asarray()
    except SampleError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, struct.error, IndexError, KeyError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _file_fault(path, exc) from None
        raise SampleError(path, f"not a readable TIFF file: {_one_line(str(exc)) or type(exc).__name__}") from None
    return tiff_to_hwc(array, axes, path)


def tiff_to_hwc(array: np.ndarray, axes: str, path: str) -> np.ndarray:
    """A TIFF series (``tifffile`` axes such as ``YX``, ``YXS``, ``CYX``, ``ZCYX``) as ``HxWxC``: the samples (``S``)
    and every other axis than ``Y`` and ``X`` (pages, channels, planes) flattened into channels, in file order."""
    if "Y" not in axes or "X" not in axes or len(axes) != array.ndim:
        raise SampleError(path, f"TIFF series with axes {axes!r} has no Y and X image axes")
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
    array = np.transpose(array, order)
    return array.reshape(array.shape[0], array.shape[1], -1)


def _read_npy(source: Any, path: str, npy_layout: str) -> np.ndarray:
    try:
        array = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _file_fault(path, exc) from None
        raise SampleError(path, f"not a readable .npy array: {_one_line(str(exc))}") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        shape = getattr(array, "shape", "?")
        raise SampleError(path, f".npy array of shape {shape}: an image is HxW, HxWxC or CxHxW")
    if array.ndim == 3 and npy_layout == "CHW":
        array = np.moveaxis(array, 0, -1)
    return array


def _read_pil_raw(source: Any, path: str) -> np.ndarray:
    from PIL import Image

    with _pil_faults(path), Image.open(source) as img:
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
        elif img.mode == "1":
            img = img.convert("L")
        else:
            img.load()
        return np.asarray(img)


def raw_format(path: str, npy_layout: str = "HWC") -> tuple[str, int] | None:
    """``(dtype, channels)`` the raw decode of the file at ``path`` gives, from its header only (TIFF tags, the
    ``.npy`` header, Pillow's mode); None when the header cannot be read (decoding then tells why)."""
    header = raw_header(path, npy_layout)
    return None if header is None else header[0]


def raw_size(path: str, npy_layout: str = "HWC") -> tuple[int, int] | None:
    """``(height, width)`` the raw decode of the file at ``path`` gives, from its header only; None if unknown."""
    header = raw_header(path, npy_layout)
    return None if header is None else header[1]


def raw_header(path: str, npy_layout: str = "HWC") -> tuple[tuple[str, int], tuple[int, int]] | None:
    """``((dtype, channels), (height, width))`` of the raw decode of ``path``, from its header; None if unknown."""
    lower = path.lower()
    try:
        if lower.endswith((".tif", ".tiff")):
            import tifffile

            with quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes, dtype = series.shape, series.axes, np.dtype(series.dtype)
            rest = [n for n, a in zip(shape, axes, strict=True) if a not in "YX"]
            size = (int(shape[axes.index("Y")]), int(shape[axes.index("X")]))
            return (_kept_dtype(dtype), int(np.prod(rest)) if rest else 1), size
        if lower.endswith(".npy"):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.ndim == 2:
                return (_kept_dtype(array.dtype), 1), (int(array.shape[0]), int(array.shape[1]))
            if npy_layout == "CHW":
                return (_kept_dtype(array.dtype), int(array.shape[0])), (int(array.shape[1]), int(array.shape[2]))
            return (_kept_dtype(array.dtype), int(array.shape[-1])), (int(array.shape[0]), int(array.shape[1]))
        from PIL import Image

        with Image.open(path) as img:
            mode = img.mode
            width, height = img.size
        modes = {"1": ("uint8", 1), "L": ("uint8", 1), "LA": ("uint8", 2), "RGB": ("uint8", 3),
                 "RGBA": ("uint8", 4), "CMYK": ("uint8", 4), "YCbCr": ("uint8", 3), "I": ("float32", 1),
                 "F": ("float32", 1)}
        fmt = ("uint16", 1) if mode.startswith("I;16") else modes.get(mode)
        return None if fmt is None else (fmt, (int(height), int(width)))
    except Exception:  # noqa: BLE001 - an unreadable header: decoding the file says why
        return None


def _kept_dtype(dtype: np.dtype) -> str:
    name = np.dtype(dtype).newbyteorder("=").name
    if dtype.kind == "b":
        return "uint8"
    return name if name in RAW_DTYPES else "float32"
