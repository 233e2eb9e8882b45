"""Image files by name: the extensions plugtrain reads as images, and the listing of a folder's image files.

Shared by the built-in datasets (indexing a folder) and ``plugtrain predict FOLDER`` (expanding folders and globs):
one definition of what counts as an image file, read from directory entries only (no decoding).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

#: File extensions (lower case) the folder datasets treat as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

#: The extensions the folder datasets also take with ``pixels = "raw"``.
RAW_EXTENSIONS: tuple[str, ...] = IMAGE_EXTENSIONS + (".npy",)


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
