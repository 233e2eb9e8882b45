"""Atomic file writes: a temporary file beside the target, renamed over it only once it is complete.

A writer that raises (or a process killed mid-write) leaves the previous file intact; the temporary file is removed
on an exception, and one left by a killed process is named ``.NAME.tmp-PID``, the pattern that
:func:`plugtrain.core.runtime.checkpoint.remove_stale_temporaries` clears. With ``fsync`` (the default) the data and
the rename are made durable, so a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | os.PathLike[str]) -> Path:
    """The temporary file that an atomic write of ``path`` goes through: ``.NAME.tmp-PID`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True, encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for a writer that streams; on a clean exit it replaces ``path``, on an exception it is
    deleted and ``path`` is left as it was.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically: see :func:`atomic_open`."""
    if isinstance(data, str):
        with atomic_open(path, "w", fsync=fsync) as f:
            f.write(data)
    else:
        with atomic_open(path, "wb", fsync=fsync) as f:
            f.write(data)
