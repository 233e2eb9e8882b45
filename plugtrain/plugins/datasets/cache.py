"""The decoded-sample cache of the file datasets (``cache = "memory" | "disk"``): each image decoded once, kept as
pixels (uint8; with ``pixels = "raw"`` their own dtype, uint16 or float32) in one file that every DataLoader
worker of every local rank maps, so that from the second epoch on only the augmentations run.

Layout
------
A split's cache is one data file and one layout file, named by the split (``imagefolder-train``) and a key: the
SHA-256 of the cache format, the decoder (its name and the Pillow / OpenCV versions), the channels and, for every
sample, its file's path, size and modification time (a webdataset sample: its shard's and its offset). Change a file,
the decoder or a library and the key changes, so a cache never serves pixels that a fresh decode would not give.

* ``<stem>.layout.npz``: every sample's byte offset and ``(height, width, channels)``, read from the image headers
  (no decoding) when the cache is made. A sample whose header cannot be read gets no slot: it is decoded each time,
  and so raises or is skipped exactly as without a cache.
* ``<stem>.data``: a table of one CRC-32 per sample, then every sample's pixels at its offset. The whole size is
  reserved (``posix_fallocate``) when the file is made, so filling it can never run out of memory or disk midway.

``"memory"`` puts the files in ``/dev/shm`` (RAM, shared by every process of the machine); ``"disk"`` in
``cache_dir`` (default ``$PLUGTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/plugtrain``, else ``~/.cache/plugtrain``),
under ``decoded/``. The size is checked before the file is made: a cache that does not fit (with
min(10 %, 8 GiB) of the memory or disk kept free, or beyond ``cache_max_gb``) is refused with a
:class:`~plugtrain.core.errors.PlugtrainError` naming the size and the free space; it is never an OOM, and a refused
cache leaves nothing behind (neither its lock file nor a folder it made). A bad ``cache_max_gb`` (not > 0) is refused
by ``plugtrain check`` already, where the spec says it.

Filling: on first touch
-----------------------
Nothing is decoded up front. A DataLoader worker that reads sample ``i`` and finds no valid pixels for it decodes
the file (as without a cache), writes the pixels into the slot and then the slot's CRC-32. A reader takes the
pixels only when their CRC matches the table (checked on each process's first read of a slot: once complete, a slot
only ever receives the same bytes again), so a slot half-written by a process that was killed (or one a machine
crash left behind) is never used: it is decoded again. Two processes filling the same slot write the same bytes.
The first epoch therefore costs what it costs without a cache, spread over the workers; the next ones only copy the
pixels (about a microsecond for a small image). The returned image is a fresh writable array, bitwise equal to the
decoder's.

Sharing and lifetime
--------------------
The first process to need a cache makes it under an exclusive ``flock`` on ``<stem>.lock`` (writing to temporary
names and renaming, so a crash never leaves a half-made file under the real name; stale temporary files are removed
by the next maker); the others wait on the lock and open the same file: one copy per machine, however many local
ranks and workers. A ``"disk"`` cache stays for the next runs (delete the folder to reclaim the space). A
``"memory"`` cache is removed when the last process using it exits (each holds a shared ``flock`` on
``<stem>.users``); a run killed with SIGKILL leaves it in ``/dev/shm`` for ``--resume`` to reuse (remove
``/dev/shm/plugtrain-cache-<uid>/`` by hand otherwise).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

MODES: tuple[str, ...] = ("none", "memory", "disk")
FORMAT = "plugtrain-decoded-cache-1"
_GIB = 1 << 30
_TABLE_ALIGN = 4096


def error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def check_params(cache: str, cache_dir: str | None, cache_max_gb: float | None) -> None:
    if cache not in MODES:
        raise error(f"dataset parameter cache must be one of {', '.join(repr(m) for m in MODES)}, not {cache!r}")
    if cache_max_gb is not None and (isinstance(cache_max_gb, bool) or not isinstance(cache_max_gb, (int, float))
                                     or cache_max_gb <= 0):
        raise error(f"dataset parameter cache_max_gb must be a positive number of GB, not {cache_max_gb!r}")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise error(f"dataset parameter cache_dir must be a path, not {cache_dir!r}")


def default_cache_root() -> Path:
    """``$PLUGTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/plugtrain``, else ``~/.cache/plugtrain``."""
    if os.environ.get("PLUGTRAIN_CACHE_DIR"):
        return Path(os.path.expanduser(os.environ["PLUGTRAIN_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plugtrain"


def cache_folder(mode: str, cache_dir: str | None) -> Path:
    if mode == "memory":
        if not os.path.isdir("/dev/shm"):
            raise error('cache = "memory" needs /dev/shm (Linux shared memory); use cache = "disk" here')
        return Path("/dev/shm") / f"plugtrain-cache-{os.getuid()}"
    root = Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_root()
    return root / "decoded"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# -- the room a cache may take -----------------------------------------------------------------------------------------
def memory_figures() -> dict[str, int]:
    """What bounds a memory cache on this machine, in bytes: ``available`` (MemAvailable, lowered to the cgroup's
    room under a memory limit) and ``total`` (MemTotal, or the cgroup limit)."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemAvailable", "MemTotal"):
                info[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    available, total = info.get("MemAvailable", 0), info.get("MemTotal", 0)
    try:  # cgroup v2: shared memory pages are charged to the cgroup that touches them
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            current = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available, total = min(available, int(limit) - current), min(total, int(limit))
    except (OSError, ValueError):
        pass
    return {"available": available, "total": total}


def reserve(total: int) -> int:
    """What a cache leaves free of ``total``: min(10 %, 8 GiB)."""
    return int(min(0.1 * total, 8 * _GIB))


def room_problem(needed: int, mode: str, label: str, *, free: int, total: int, fs_free: int | None = None,
                 budget: int | None = None) -> str | None:
    """Why a cache of ``needed`` bytes cannot be made, or ``None``.

    ``free`` / ``total``: the available and total memory (``"memory"``) or the file system's free and total bytes
    (``"disk"``); ``fs_free``: /dev/shm's free bytes for ``"memory"``; ``budget``: what ``cache_max_gb`` leaves for
    this split."""
    what = f'cache = "{mode}": the {label} split decodes to {fmt_bytes(needed)}'
    if budget is not None and needed > budget:
        return (f"{what}, more than cache_max_gb allows ({fmt_bytes(max(budget, 0))} left for it); raise "
                f'cache_max_gb, or use cache = "none"')
    keep = reserve(total)
    room = free - keep
    if mode == "memory":
        if needed > room:
            return (f"{what}, but only {fmt_bytes(max(room, 0))} of memory can hold it ({fmt_bytes(free)} available, "
                    f"{fmt_bytes(keep)} kept free for training); use cache = \"disk\" (with cache_dir on a local "
                    f'disk), or cache = "none"')
        if fs_free is not None and needed > fs_free:
            return (f"{what}, but /dev/shm has {fmt_bytes(fs_free)} free (in a container, raise its size, e.g. "
                    f'docker --shm-size); use cache = "disk", or cache = "none"')
        return None
    if needed > room:
        return (f"{what}, but the disk has {fmt_bytes(free)} free ({fmt_bytes(keep)} kept free); set cache_dir to a "
                f'disk with more room, or use cache = "none"')
    return None


def _check_room(needed: int, mode: str, folder: Path, label: str, budget: int | None) -> None:
    st = os.statvfs(folder)
    fs_free, fs_total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if mode == "memory":
        mem = memory_figures()
        problem = room_problem(needed, mode, label, free=mem["available"], total=mem["total"], fs_free=fs_free,
                               budget=budget)
    else:
        problem = room_problem(needed, mode, label, free=fs_free, total=fs_total, budget=budget)
    if problem:
        raise error(problem)


# -- locks -------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if need be); safe against the file being removed and made again
    by another process meanwhile (the lock is retaken on the file the path names)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


#: Memory caches this process uses: data path -> (stem, fd with a shared lock on <stem>.users).
_USERS: dict[str, tuple[Path, int]] = {}
_OWNER_PID = [0]


def _register_user(stem: Path) -> None:
    """Hold a shared lock on ``<stem>.users`` until exit (called with ``<stem>.lock`` held)."""
    key = str(stem)
    if key in _USERS:
        return
    fd = os.open(f"{stem}.users", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _USERS[key] = (stem, fd)
    if _OWNER_PID[0] != os.getpid():
        _OWNER_PID[0] = os.getpid()
        atexit.register(release_memory_caches)


def release_memory_caches() -> None:
    """At exit: remove each memory cache this process used that no other process uses any more."""
    if _OWNER_PID[0] != os.getpid():  # a forked child (DataLoader workers do not run atexit, but be sure)
        return
    for key, (stem, fd) in list(_USERS.items()):
        try:
            with exclusive(Path(f"{stem}.lock")):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process (a local rank) still maps it: the last one out removes it
                for suffix in (".data", ".layout.npz", ".users", ".lock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{stem}{suffix}")
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            _USERS.pop(key, None)


# -- the cache ---------------------------------------------------------------------------------------------------------
def decoder_identity(decoder: str) -> str:
    """The decoder and the library versions whose pixels a cache holds."""
    import cv2
    import PIL

    return f"{decoder};pillow={PIL.__version__};opencv={cv2.__version__}"


def cache_key(entries: Any, n: int, channels: Any, decoder: str, pixels: str = "") -> str:
    """The SHA-256 that names a cache; ``pixels`` (the reader's mode and dtype, empty for 8-bit data) is part of it."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{decoder_identity(decoder)}\0{channels}\0{n}\0".encode())
    if pixels:
        h.update(f"{pixels}\0".encode())
    for e in entries:
        h.update(e.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


class DecodedCache:
    """The decoded pixels of one split, in a file shared by every process of the machine (see the module docstring).

    :meth:`read` returns a fresh ``HxWxC`` array of the cache's ``dtype`` (uint8, or the dtype of raw pixels:
    uint16, float32) or ``None`` (not filled yet, not cacheable, or a slot whose CRC does not match); :meth:`write`
    stores what the decoder returned. Pickled (spawned workers) without its mapping, which is reopened on first
    use."""

    def __init__(self, path: str, offsets: np.ndarray, shapes: np.ndarray, mode: str, dtype: Any = np.uint8) -> None:
        self.path, self.offsets, self.shapes, self.mode = path, offsets, shapes, mode
        self.dtype = np.dtype(dtype)
        self.n = len(offsets)
        self.total = os.path.getsize(path)  # bytes: the CRC table and every slot
        self._sizes = np.where(shapes[:, 0] > 0, shapes.astype(np.int64).prod(axis=1), 0) * self.dtype.itemsize
        self._buf: np.ndarray | None = None
        self._crc: np.ndarray | None = None
        self._mm: Any = None
        self._verified: bytearray | None = None  # slots this process has seen complete (they stay so)

    def _open(self) -> None:
        import mmap

        fd = os.open(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self._crc = self._buf[:4 * self.n].view(np.uint32)
        self._verified = bytearray(self.n)

    def read(self, i: int) -> np.ndarray | None:
        if self._buf is None:
            self._open()
        stored = self._crc[i]  # type: ignore[index]
        if not stored:
            return None
        start = self.offsets[i]
        out = self._buf[start:start + self._sizes[i]].copy()  # type: ignore[index]
        if not self._verified[i]:  # type: ignore[index]
            # once complete, a slot only ever gets the same bytes again: check its CRC once per process
            if (zlib.crc32(out) or 1) != int(stored):  # half-written (a killed writer) or being written
                return None
            self._verified[i] = 1  # type: ignore[index]
        return out.view(self.dtype).reshape(self.shapes[i])

    def write(self, i: int, image: np.ndarray) -> None:
        h, w, c = (int(x) for x in self.shapes[i])
        if h <= 0 or image.dtype != self.dtype or image.shape != (h, w, c):
            return  # no slot, or the header said another size or dtype: this sample is decoded each time
        if self._buf is None:
            self._open()
        flat = np.ascontiguousarray(image).reshape(-1).view(np.uint8)
        start = int(self.offsets[i])
        self._buf[start:start + flat.size] = flat  # type: ignore[index]
        self._crc[i] = zlib.crc32(flat) or 1  # type: ignore[index]  # after the pixels: marks the slot complete
        self._verified[i] = 1  # type: ignore[index]  # complete now; a later (even torn) write puts the same bytes

    def filled(self) -> int:
        if self._buf is None:
            self._open()
        return int(np.count_nonzero(self._crc))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_buf": None, "_crc": None, "_mm": None, "_verified": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"DecodedCache({self.n} samples, {self.mode}, {self.path})"


def _clear_stale(stem: Path) -> None:
    """Temporary files of makers that died (called with ``<stem>.lock`` held: no maker is running)."""
    for p in stem.parent.glob(f"{stem.name}.*.tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _load_layout(stem: Path, key: str, n: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    try:
        with np.load(f"{stem}.layout.npz", allow_pickle=False) as z:
            if str(z["key"]) != key or len(z["offsets"]) != n:
                return None
            offsets, shapes, total = z["offsets"], z["shapes"], int(z["total"])
        if os.path.getsize(f"{stem}.data") != total:
            return None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # absent, or not ours: made again
        return None
    return offsets, shapes, total


def _layout(shapes: np.ndarray, itemsize: int = 1) -> tuple[np.ndarray, int]:
    n = len(shapes)
    table = -(-4 * n // _TABLE_ALIGN) * _TABLE_ALIGN
    sizes = np.where(shapes[:, 0] > 0, shapes.astype(np.int64).prod(axis=1), 0) * itemsize
    offsets = np.empty(n, dtype=np.int64)
    offsets[0:1] = table
    if n > 1:
        np.cumsum(sizes[:-1], out=offsets[1:])
        offsets[1:] += table
    return offsets, int(table + sizes.sum())


def _make(stem: Path, key: str, shapes: np.ndarray, offsets: np.ndarray, total: int) -> None:
    tmp = f"{stem}.data.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, total)  # reserve every byte now: filling cannot fail for want of room
        except OSError as exc:
            raise error(f"cannot reserve {fmt_bytes(total)} for the decoded-sample cache in {stem.parent}: "
                        f"{exc.strerror or exc}") from None
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, f"{stem}.data")
    ltmp = f"{stem}.layout.tmp-{os.getpid()}.npz"
    with open(ltmp, "wb") as f:
        np.savez(f, key=np.array(key), offsets=offsets, shapes=shapes, total=np.array(total, dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(ltmp, f"{stem}.layout.npz")  # last: its presence says the cache is ready


def open_cache(split: Any, mode: str, cache_dir: str | None, label: str, budget: int | None = None,
               announce: bool = True) -> DecodedCache:
    """The cache of ``split`` (made if need be; see the module docstring).

    ``split`` offers ``__len__``, ``channels``, ``decoder``, ``cache_entries()`` (one identity string per sample,
    for the key) and ``cache_shape(i)`` (``(height, width)`` from the header, or ``None``); optionally
    ``cache_dtype()`` (the dtype of its decoded pixels, read from a header: the slots' sizes use it; default uint8)
    and ``pixels`` / ``npy_layout`` (the reader's mode, part of the key)."""
    from plugtrain.core import console

    n = len(split)
    folder = cache_folder(mode, cache_dir)
    made = _missing_parents(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise error(f"cannot make the cache folder {folder}: {exc.strerror or exc}") from None
    dtype = np.dtype(split.cache_dtype() if callable(getattr(split, "cache_dtype", None)) else np.uint8)
    pixels = "" if getattr(split, "pixels", "uint8") == "uint8" else f"raw;{dtype.name};{split.npy_layout}"
    key = cache_key(split.cache_entries(), n, split.channels, split.decoder, pixels)
    stem = folder / f"{label}-{key[:24]}"
    lock_existed = os.path.exists(f"{stem}.lock")
    try:
        with exclusive(Path(f"{stem}.lock")):
            try:
                created, offsets, shapes, total = _open_or_make(split, mode, folder, stem, key, label, budget,
                                                                announce, dtype.itemsize)
            except BaseException:
                if not lock_existed and not os.path.exists(f"{stem}.data"):  # held: waiters retake a new lock file
                    with contextlib.suppress(OSError):
                        os.unlink(f"{stem}.lock")
                raise
    except BaseException:
        _remove_empty(made)
        raise
    cache = DecodedCache(f"{stem}.data", offsets, shapes, mode, dtype)
    if announce:
        uncached = int(np.count_nonzero(shapes[:, 0] <= 0))
        state = ("new: filled as the first epoch reads them" if created
                 else f"{cache.filled():,} of {n:,} already decoded")
        extra = f"; {uncached} unreadable header(s): decoded each time" if uncached else ""
        console.echo(f"data: {label} cache ({mode}): {n:,} images, {fmt_bytes(total)} in {stem}.data; {state}{extra}")
    return cache


def _open_or_make(split: Any, mode: str, folder: Path, stem: Path, key: str, label: str, budget: int | None,
                  announce: bool, itemsize: int = 1) -> tuple[bool, np.ndarray, np.ndarray, int]:
    """With ``<stem>.lock`` held: the cache's layout, made if need be: ``(created, offsets, shapes, total)``."""
    from plugtrain.core import console

    n = len(split)
    created = False
    _clear_stale(stem)
    found = _load_layout(stem, key, n)
    if found is None:
        if announce and n >= 20000:
            console.echo(f"data: reading {n:,} image headers for the {label} cache...")
        from plugtrain.plugins.datasets.decode import channel_count

        shapes = np.full((n, 3), -1, dtype=np.int32)
        channels = channel_count(split.channels)
        for i in range(n):
            hw = split.cache_shape(i)
            if hw is not None:
                shapes[i] = (hw[0], hw[1], channels)
        offsets, total = _layout(shapes, itemsize)
        _check_room(total, mode, folder, label, budget)
        _make(stem, key, shapes, offsets, total)
        created = True
    else:
        offsets, shapes, total = found
        if budget is not None and total > budget:
            raise error(f'cache = "{mode}": the {label} split decodes to {fmt_bytes(total)}, more than '
                        f'cache_max_gb allows ({fmt_bytes(max(budget, 0))} left for it); raise cache_max_gb, or '
                        'use cache = "none"')
    if mode == "memory":
        _register_user(stem)
    return created, offsets, shapes, total


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first (what ``mkdir -p`` makes)."""
    out: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _remove_empty(made: list[Path]) -> None:
    """A cache that was refused (no room, over ``cache_max_gb``) leaves no folder behind that it made."""
    for p in made:
        try:
            p.rmdir()
        except OSError:
            break


def attach(splits: Mapping[str, Any], mode: str, cache_dir: str | None, cache_max_gb: float | None,
           dataset: str) -> None:
    """Give each split of ``splits`` (name -> split) its cache, unless ``mode`` is ``"none"``."""
    if mode == "none":
        return
    budget = int(cache_max_gb * 1e9) if cache_max_gb is not None else None
    for name, split in splits.items():
        if split is None or len(split) == 0:
            continue
        split.cache = open_cache(split, mode, cache_dir, f"{dataset}-{name}", budget)
        if budget is not None:
            budget -= split.cache.total
