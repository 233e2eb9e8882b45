"""``webdataset``: images in WebDataset ``.tar`` shards, read by random access.

A WebDataset shard is a plain tar file whose consecutive members that share a key (the name up to the first dot of
its last path component) form one sample: ``000123.png`` + ``000123.cls``. ``plugtrain shards`` writes such shards
from any data set; so do webdataset's ``TarWriter`` / ``ShardWriter``, ``tarp`` and GNU tar.

Random access, not streaming
----------------------------
Each shard is indexed once when the dataset is built (every tar header is read, not the images), so a split is a
random-access sequence like every other plugtrain dataset, and what the runtime guarantees for those holds unchanged:
:class:`~plugtrain.core.runtime.loader.GlobalBatchSampler` gives every rank the same number of batches whatever the
shard sizes (no hang at the end of an epoch), the order is a function of ``(seed, epoch)`` over every sample (not just a
shuffle buffer), mid-epoch resume is exact, and validation (:class:`~plugtrain.core.runtime.loader.ShardedBatchSampler`)
counts each sample once. A sample is one ``pread`` from an open shard; the OS page cache keeps hot shards in memory.

The price, against webdataset's pure streaming (``WebDataset(urls).shuffle(n)``): the shards must be local files
(or be fetched into one, below), and reads are random rather than sequential, which is what local SSDs and page
caches serve well and spinning disks or object stores do not. Streaming would make per-rank batch counts depend on
shard sizes, the order depend on the shuffle buffer and the workers, and resume approximate; plugtrain keeps the
guarantees.

Shard names
-----------
``shards`` (and ``val_shards``, ``test_shards``) is a path, a brace pattern (``data/train-{000000..000009}.tar``),
a list of those, a folder written by ``plugtrain shards`` (its ``plugtrain-shards.json`` lists the splits), or a
URL webdataset's ``gopen`` opens: ``pipe:COMMAND`` (a shell command that writes the tar to stdout, e.g.
``pipe:aws s3 cp s3://bucket/train-{000000..000009}.tar -``), ``http(s)://...`` (through ``curl``). A URL is
copied once into ``cache_dir/shards/`` (temporary name, then renamed; the local ranks share the copy) and read from
there; a shell command in a spec runs as any command would, so read a spec with ``pipe:`` URLs before running it
(``WDS_SECURE=1``, webdataset's switch, refuses them).

Every name is checked before anything is read or written (``plugtrain check`` runs the same check,
:func:`shard_problems`, and points at the parameter): a brace pattern must be balanced, hold no empty ``{}``, no
group that is neither a list (``{a,b}``) nor a range (``{000..009}``, ``{a..f}``), expand to at most
:data:`MAX_SHARDS` names and name no shard twice; a URL must have a scheme webdataset opens, and a ``pipe:`` URL is
refused under ``WDS_SECURE=1`` before the cache folder is touched.

Samples
-------
The image is the first member whose extension is one of png, jpg, jpeg, bmp, webp, tif, tiff (or ``image_key``,
e.g. ``"jpg"`` or ``"jpg;png"``), decoded by the same decoder as ``imagefolder``
(:func:`~plugtrain.plugins.datasets.decode.decode_bytes`: bitwise the pixels of the file it came from). The target
is the ``.cls`` member (a class index, ASCII) for classification, the ``.json`` member (a JSON list of the sample's
class indices or names, ``[1, 4]``) for multilabel, the ``.target`` member (a JSON number or list of numbers) for
regression (``label_key`` names another). Class names, task, channels and decoder default to what
``plugtrain-shards.json`` beside the first shard says, else ``"0"``, ``"1"``, ... (the largest index + 1),
classification, 3 and ``pil``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plugtrain.core.atomic import atomic_open
from plugtrain.core.files import IMAGE_EXTENSIONS
from plugtrain.plugins.datasets.common import check_common, check_fraction, error, param, read_as
from plugtrain.plugins.datasets.decode import channel_count, decode_bytes
from plugtrain.plugins.datasets.splits import (
    PathTable,
    _normalise_index,
    _SplitBase,
    _target_at,
    _target_list,
    _targets_array,
    split_indices,
)

META_NAME = "plugtrain-shards.json"
META_FORMAT = "plugtrain-shards"
_IMAGE_EXTS = tuple(e[1:] for e in IMAGE_EXTENSIONS)
_HEADER_PEEK = 1 << 16


# -- shard names -------------------------------------------------------------------------------------------------------
def is_url(name: str) -> bool:
    """A name webdataset opens through a scheme (``pipe:``, ``http://``, ...), not a local path."""
    if name.startswith("pipe:"):
        return True
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.isalnum() and scheme != "file"


#: The most shard names one parameter may expand to (a larger brace range is a typo, and would fill the memory).
MAX_SHARDS = 100_000
_INT_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?")  # braceexpand's grammar
_CHAR_RANGE = re.compile(r"([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PATTERN_HELP = "a brace pattern is a list {a,b} or a range {000..009}"


class _BadPattern(Exception):
    pass


def _range_size(expr: str) -> int | None:
    """How many names a braceexpand range expression gives (None: not a range); never expands it."""
    m = _INT_RANGE.fullmatch(expr)
    if m:
        lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0) or 1
        return abs(hi - lo) // step + 1
    m = _CHAR_RANGE.fullmatch(expr)
    if m:
        lo, hi, step = _ALPHABET.index(m.group(1)), _ALPHABET.index(m.group(2)), int(m.group(3) or 0) or 1
        return abs(hi - lo) // step + 1
    return None


def _split_top(text: str) -> list[tuple[int, str]]:
    """``text`` split at its top-level commas: ``(offset, item)`` pairs (braceexpand's escapes respected)."""
    items, depth, start, pos = [], 0, 0, 0
    while pos < len(text):
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        depth += (c == "{") - (c == "}")
        if c == "," and depth == 0:
            items.append((start, text[start:pos]))
            start = pos + 1
        pos += 1
    items.append((start, text[start:]))
    return items


def _pattern_size(text: str, off: int = 0) -> int:
    """How many names braceexpand makes of ``text``; :class:`_BadPattern` (naming the 1-based character) for an
    unbalanced, empty or meaningless brace group, or a range that is not one."""
    total, depth, start, opens, pos = 1, 0, 0, [], 0
    while pos < len(text):
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "{":
            opens.append(pos)
            if depth == 0:
                start = pos
            depth += 1
        elif c == "}":
            if depth == 0:
                raise _BadPattern(f"unbalanced braces: the '}}' at character {off + pos + 1} closes no '{{'")
            depth -= 1
            opens.pop()
            if depth == 0:
                total *= _group_size(text[start + 1:pos], off + start + 1, start > 0 and text[start - 1] == "$")
                if total > MAX_SHARDS:
                    raise _BadPattern(f"it expands to more than {MAX_SHARDS:,} shard names (a range too wide?)")
        pos += 1
    if depth:
        raise _BadPattern(f"unbalanced braces: the '{{' at character {off + opens[-1] + 1} is never closed")
    return total


def _group_size(expr: str, off: int, literal_ok: bool = False) -> int:
    """How many names one brace group gives; ``literal_ok``: a group braceexpand keeps as it is may stand (a
    shell's ``${VAR}`` in a ``pipe:`` command)."""
    where = f"'{{{expr}}}' at character {off}"
    if expr == "":
        raise _BadPattern(f"the empty braces {where} expand to nothing ({_PATTERN_HELP})")
    size = _range_size(expr)
    if size is not None:
        return size
    items = _split_top(expr)
    if len(items) > 1:
        return sum(_pattern_size(item, off + i) for i, item in items)
    _pattern_size(expr, off)  # nested groups inside a literal pair of braces
    if literal_ok:
        return 1
    if ".." in expr:
        raise _BadPattern(f"{where} is not a range: a range is {{FIRST..LAST}} (or {{FIRST..LAST..STEP}}) of integers "
                          "(000..009) or of single letters (a..f)")
    raise _BadPattern(f"{where} is neither a list nor a range, so it would stay in the name as it is "
                      f"({_PATTERN_HELP})")


def _wds_secure() -> bool:
    """Whether webdataset refuses ``pipe:`` URLs here (``WDS_SECURE``, as webdataset reads it)."""
    import sys

    flag = os.environ.get("WDS_SECURE", "0").strip()
    loaded = sys.modules.get("webdataset.utils")
    try:
        on = bool(int(flag or "0"))
    except ValueError:
        on = False
    return on or bool(getattr(loaded, "enforce_security", False))


def _url_problem(name: str) -> str | None:
    if name.startswith("pipe:"):
        if _wds_secure():
            return (f"'{name}' is a pipe: URL (a shell command), and WDS_SECURE=1 refuses them: unset WDS_SECURE, or "
                    "fetch the shards to local files first")
        if not name[len("pipe:"):].strip():
            return f"'{name}' is a pipe: URL without a command"
        return None
    scheme = name.partition("://")[0].lower()
    from webdataset.gopen import gopen_schemes

    known = sorted(k for k in gopen_schemes if not k.startswith("_") and k != "pipe")
    if scheme not in known:
        from plugtrain.core.errors import did_you_mean

        return (f"'{name}': webdataset opens no {scheme}:// URL.{did_you_mean(scheme, known)} It opens "
                f"{', '.join(s + '://' for s in known)}, pipe:COMMAND and local paths")
    return None


def shard_problems(names: Any) -> list[str]:
    """What is wrong with a ``shards`` / ``val_shards`` / ``test_shards`` value (a name, a brace pattern, or a list
    of them), before anything is read: one message per problem. Checked by ``plugtrain check`` and again by the
    dataset, before the cache folder is touched."""
    import braceexpand

    items = [names] if isinstance(names, str) else names
    if not isinstance(items, list):
        return [f"expected a shard name, a brace pattern or a list of them, not {names!r}"]
    if not items:
        return ["an empty list names no shard"]
    problems: list[str] = []
    total = 0
    for i, item in enumerate(items):
        label = f"item {i + 1} " if not isinstance(names, str) else ""
        if not isinstance(item, str):
            problems.append(f"{label}{item!r}: shard names must be strings")
            continue
        if not item.strip():
            problems.append(f"{label}an empty shard name")
            continue
        try:
            total += _pattern_size(item)
        except _BadPattern as exc:
            problems.append(f"{label}'{item}': {exc}")
            continue
        if is_url(item):
            problem = _url_problem(item)
            if problem:
                problems.append(f"{label}{problem}")
    if problems:
        return problems
    if total > MAX_SHARDS:
        return [f"the names expand to {total:,} shards, more than {MAX_SHARDS:,} (a range too wide?)"]
    seen: set[str] = set()
    for item in items:
        for name in braceexpand.braceexpand(item):
            if name in seen:
                return [f"'{name}' is named twice (its samples would count twice)"]
            seen.add(name)
    return []


def expand(names: str | Iterable[str], what: str = "shards") -> list[str]:
    """Brace patterns expanded (``a-{000..002}.tar``), in order; a list expands each element. A name
    :func:`shard_problems` refuses raises one :class:`PlugtrainError` naming the parameter ``what``."""
    import braceexpand

    items = names if isinstance(names, str) else list(names)
    problems = shard_problems(items)
    if problems:
        raise error(f"webdataset: {what}: {'; '.join(problems)}")
    out: list[str] = []
    for item in [items] if isinstance(items, str) else items:
        out.extend(braceexpand.braceexpand(item))
    return out


def validate(params: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[str | None, str, bool]]:
    """``plugtrain check`` of the shard names (see :func:`shard_problems`): each problem points at its parameter."""
    out: list[tuple[str | None, str, bool]] = []
    for key in ("shards", "val_shards", "test_shards"):
        value = params.get(key, defaults.get(key))
        if value is None or (key == "shards" and isinstance(value, str) and not is_url(value)
                             and os.path.isdir(_local(value))):
            continue
        out.extend((key, problem, False) for problem in shard_problems(value))
    return out


def _local(name: str) -> str:
    return name[len("file://"):] if name.startswith("file://") else os.path.expanduser(name)


def fetch(url: str, folder: Path) -> str:
    """The local copy of the shard at ``url`` (made once, atomically, shared by the processes of the machine)."""
    from plugtrain.core import console
    from plugtrain.plugins.datasets.cache import exclusive

    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"fetched-{hashlib.sha256(url.encode()).hexdigest()[:32]}.tar"
    with exclusive(Path(f"{dest}.lock")):
        if dest.exists():
            return str(dest)
        for stale in folder.glob(f"*{dest.name}.tmp-*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        from webdataset.gopen import gopen

        console.echo(f"data: fetching {url} into {dest}")
        try:
            with gopen(url, "rb") as src, atomic_open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, ValueError) as exc:
            raise error(f"webdataset: cannot read shard {url}: {exc}") from None
    return str(dest)


# -- tar index ---------------------------------------------------------------------------------------------------------
def _number(field: bytes, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise error(f"{where}: not a tar file (bad header field {text[:20]!r})") from None


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1:pos + length - 1]
        k, _, v = record.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(path: str, where: str) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of every regular file in the tar at ``path``, in order, from the headers alone
    (ustar, GNU long names and pax headers). A compressed, truncated or corrupt tar is a PlugtrainError naming
    ``where``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise error(f"{where}: empty file, not a tar shard")
        magic = os.pread(fd, 6, 0)
        if magic[:2] == b"\x1f\x8b" or magic[:4] == b"\x28\xb5\x2f\xfd" or magic[:3] == b"BZh" \
                or magic[:6] == b"\xfd7zXZ\x00":
            raise error(f"{where}: a compressed shard; random access needs an uncompressed .tar (decompress it, "
                        "e.g. gunzip / zstd -d)")
        off, longname, pax = 0, None, {}
        while True:
            header = os.pread(fd, 512, off)
            if len(header) < 512:  # a tar ends with zero blocks: without them it was cut short (a partial copy)
                raise error(f"{where}: truncated tar (it ends at byte {size} without the end-of-archive blocks)")
            if not header.strip(b"\0"):
                return  # end-of-archive blocks
            stored = _number(header[148:156], where)
            if stored != sum(header[:148]) + 256 + sum(header[156:]):
                raise error(f"{where}: not a tar file, or corrupt (bad header checksum at byte {off})")
            kind = header[156:157]
            length = _number(header[124:136], where)
            name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            data = off + 512
            if kind in (b"L", b"x", b"g"):
                body = os.pread(fd, length, data)
                if kind == b"L":
                    longname = body.split(b"\0", 1)[0]
                elif kind == b"x":
                    pax = _pax(body)
                off = data + -(-length // 512) * 512
                continue
            text = pax.get("path") or (longname or name).decode("utf-8", "surrogateescape")
            if "size" in pax:
                length = int(pax["size"])
            longname, pax = None, {}
            if data + length > size:
                raise error(f"{where}: truncated tar ({text} needs {length} bytes at {data}, the file has {size})")
            if kind in (b"0", b"\0", b"7"):
                yield text, data, length
            off = data + -(-length // 512) * 512
    finally:
        os.close(fd)


def _is_meta(name: str) -> bool:  # what webdataset's tar_file_iterator skips
    import re

    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(
        re.match(r"__[^/]*__($|/)", name))


def tar_samples(path: str, where: str) -> Iterator[tuple[str, dict[str, tuple[int, int]], str]]:
    """The samples of one shard, as webdataset groups them: ``(key, {extension: (offset, size)}, fault)``
    (consecutive members with the same key; extensions lower-cased); ``fault`` is "" or why the sample is bad."""
    from webdataset.tariterators import base_plus_ext

    key: str | None = None
    members: dict[str, tuple[int, int]] = {}
    fault = ""
    for name, off, size in tar_members(path, where):
        if _is_meta(name):
            continue
        prefix, suffix = base_plus_ext(name)
        if prefix is None:
            continue
        suffix = suffix.lower()
        if prefix != key:
            if key is not None:
                yield key, members, fault
            key, members, fault = prefix, {}, ""
        if suffix in members:
            fault = f"duplicate member {name}"
        members[suffix] = (off, size)
    if key is not None:
        yield key, members, fault


# -- the split ---------------------------------------------------------------------------------------------------------
class ShardSplit(_SplitBase):
    """A split of samples in tar shards: each ``split[i]`` is one ``pread`` of the image member and its decode.

    ``shards``: the local files; ``names``: what messages call them (the URL or path given). Per sample: the shard
    index, the image member's offset and size, its extension, its key and the target. Open shard files are kept per
    process (at most 64, by index), never shared across a fork in a way that matters: ``pread`` has no file
    position."""

    _MAX_OPEN = 64

    def __init__(self, shards: list[str], names: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 ext: np.ndarray, ext_names: tuple[str, ...], keys: PathTable, targets: Any, *, channels: int = 3,
                 decoder: str = "pil", task: str = "classification", skipped: int = 0,
                 problems: Iterable[tuple[str, str]] = (), pixels: str = "uint8", npy_layout: str = "HWC") -> None:
        self.shards, self.names = list(shards), list(names)
        self.pixels, self.npy_layout = pixels, npy_layout  # as imagefolder's (decode.decode_bytes)
        self._shard = np.asarray(shard, dtype=np.int32)
        self._offset = np.asarray(offset, dtype=np.int64)
        self._size = np.asarray(size, dtype=np.int64)
        self._ext = np.asarray(ext, dtype=np.int16)
        self.ext_names = tuple(ext_names)
        self._keys = keys
        self._targets = targets if isinstance(targets, np.ndarray) else _targets_array(targets, task)
        self._vector = self._targets.ndim == 2 and (self._targets.shape[1] > 1 or task == "multilabel")
        self.channels, self.decoder, self.task = channels, decoder, task
        self.skipped, self.problems = skipped, list(problems)
        self._fds: dict[int, int] = {}
        self._identity: list[str] | None = None

    def __len__(self) -> int:
        return len(self._shard)

    def _read(self, i: int, limit: int | None = None) -> bytes:
        from plugtrain.core.data import SampleError

        s = int(self._shard[i])
        fd = self._fds.get(s)
        if fd is None:
            if len(self._fds) >= self._MAX_OPEN:
                self._close()
            try:
                fd = os.open(self.shards[s], os.O_RDONLY)
            except OSError as exc:
                raise SampleError(self.path(i), f"cannot open the shard: {exc.strerror or exc}") from None
            self._fds[s] = fd
        size = int(self._size[i]) if limit is None else min(limit, int(self._size[i]))
        try:
            data = os.pread(fd, size, int(self._offset[i]))
        except OSError as exc:
            raise SampleError(self.path(i), f"cannot read the shard: {exc.strerror or exc}") from None
        if len(data) != size:
            raise SampleError(self.path(i), "the shard is shorter than when it was indexed (changed or truncated)")
        return data

    def _close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        i = _normalise_index(i, len(self))
        cache = self.cache
        image = cache.read(i) if cache is not None else None
        if image is None:
            image = decode_bytes(self._read(i), self.path(i), self.channels, self.decoder, self.pixels,
                                 self.npy_layout)
            if cache is not None:
                cache.write(i, image)
        return image, _target_at(self._targets, i, self._vector)

    def path(self, i: int) -> str:
        """``shard:key.ext`` of sample ``i`` (for messages)."""
        i = _normalise_index(i, len(self))
        return f"{self.names[int(self._shard[i])]}:{self._keys[i]}.{self.ext_names[int(self._ext[i])]}"

    def key(self, i: int) -> str:
        return self._keys[_normalise_index(i, len(self))]

    def _target_list(self) -> list[Any]:
        return _target_list(self._targets, self._vector)

    def subset(self, indices: Iterable[int]) -> ShardSplit:
        """A split of the samples at ``indices`` (in that order); ``skipped`` and ``problems`` carry over."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return ShardSplit(self.shards, self.names, self._shard[idx], self._offset[idx], self._size[idx],
                          self._ext[idx], self.ext_names, self._keys.take(idx), self._targets[idx],
                          channels=self.channels, decoder=self.decoder, task=self.task, skipped=self.skipped,
                          problems=self.problems, pixels=self.pixels, npy_layout=self.npy_layout)

    # the decoded-sample cache (plugtrain.plugins.datasets.cache)
    def cache_entries(self) -> Iterator[str]:
        ids = []
        for p in self.shards:
            st = os.stat(p)
            ids.append(f"{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}")
        for i in range(len(self)):
            yield f"{ids[int(self._shard[i])]}\0{int(self._offset[i])}\0{int(self._size[i])}"

    def cache_shape(self, i: int) -> tuple[int, int] | None:
        from plugtrain.core.data import SampleError
        from plugtrain.plugins.datasets.decode import image_size

        try:
            hw = image_size(self._read(i, _HEADER_PEEK))
            if hw is None and self._size[i] > _HEADER_PEEK:
                hw = image_size(self._read(i))
        except SampleError:
            return None
        return hw

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close()

    def __repr__(self) -> str:
        cached = f", cache={self.cache.mode}" if self.cache is not None else ""
        return f"ShardSplit({len(self)} samples in {len(self.shards)} shards, channels={self.channels}{cached})"


# -- building ----------------------------------------------------------------------------------------------------------
def read_meta(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, META_NAME)
    if not os.path.isfile(path):
        return None
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise error(f"{path}: not a {META_FORMAT} file (no \"format\": \"{META_FORMAT}\")")
    return meta


def _resolve(shards: Any, val_shards: Any, test_shards: Any) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    """The shard names of each split, and the metadata written by ``plugtrain shards`` (if any)."""
    names: dict[str, list[str]] = {}
    meta = None
    if isinstance(shards, str) and not is_url(shards) and os.path.isdir(_local(shards)):
        folder = _local(shards)
        meta = read_meta(folder)
        if meta is None:
            raise error(f"webdataset: shards = '{shards}' is a folder without {META_NAME}; name the shards "
                        f"(a brace pattern such as '{shards}/train-{{000000..000009}}.tar')")
        for split, info in (meta.get("splits") or {}).items():
            names[split] = [os.path.join(folder, s) for s in info.get("shards", [])]
        if "train" not in names:
            raise error(f"{os.path.join(folder, META_NAME)}: lists no train split")
    else:
        names["train"] = expand(shards, "shards")
    for split, given in (("val", val_shards), ("test", test_shards)):
        if given is not None:
            names[split] = expand(given, f"{split}_shards")
    for split, items in names.items():
        if not items:
            raise error(f"webdataset: the {split} shards pattern names no shard")
    if meta is None:
        first = names["train"][0]
        if not is_url(first):
            meta = read_meta(os.path.dirname(_local(first)) or ".")
    return names, meta


def _parse_target(data: bytes, task: str) -> tuple[Any, str]:
    text = data.decode("utf-8", "replace").strip()
    if task == "multilabel":  # class indices or names; made multi-hot once the class names are known
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(
                isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value):
            return None, f"labels {text[:40]!r} are not a JSON list of class indices or names"
        return value, ""
    if task == "classification":
        try:
            return int(text), ""
        except ValueError:
            return None, f"class label {text[:40]!r} is not an integer"
    import math

    try:
        value = json.loads(text)
    except ValueError:
        return None, f"target {text[:40]!r} is not a JSON number or list of numbers"
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values):
        return None, f"target {text[:40]!r} is not a JSON number or list of finite numbers"
    return [float(v) for v in values], ""


def index_split(split: str, names: list[str], *, image_exts: tuple[str, ...], label_ext: str, task: str,
                fetch_dir: Path) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Index the shards of one split: the per-sample arrays and the faults ``(where, key, reason)``."""
    shards: list[str] = []
    shard, offset, size, ext, keys, targets = [], [], [], [], [], []
    faults: list[tuple[str, str, str]] = []
    ext_names = list(image_exts)
    for s, name in enumerate(names):
        if is_url(name):
            local = fetch(name, fetch_dir)
        else:
            local = _local(name)
            if not os.path.exists(local):
                raise error(f"webdataset: {split} shard '{name}' does not exist")
            if os.path.isdir(local):
                raise error(f"webdataset: {split} shard '{name}' is a directory, not a tar file")
        shards.append(local)
        fd = os.open(local, os.O_RDONLY)
        try:
            for key, members, fault in tar_samples(local, name):
                where = f"{name}:{key}"
                if fault:
                    faults.append((where, key, fault))
                    continue
                img = next((e for e in image_exts if e in members), None)
                if img is None:
                    faults.append((where, key, f"no image member ({'/'.join(image_exts)}); it has "
                                               f"{', '.join(sorted(members)) or 'none'}"))
                    continue
                if label_ext not in members:
                    faults.append((where, key, f"no .{label_ext} member (the target); it has "
                                               f"{', '.join(sorted(members))}"))
                    continue
                loff, lsize = members[label_ext]
                target, reason = _parse_target(os.pread(fd, min(lsize, 1 << 20), loff), task)
                if reason:
                    faults.append((where, key, reason))
                    continue
                shard.append(s)
                offset.append(members[img][0])
                size.append(members[img][1])
                ext.append(ext_names.index(img))
                keys.append(key)
                targets.append(target)
        finally:
            os.close(fd)
    return {"shards": shards, "names": list(names), "shard": shard, "offset": offset, "size": size, "ext": ext,
            "ext_names": tuple(ext_names), "keys": keys, "targets": targets}, faults


def webdataset(
    shards: str | list[str],
    val_shards: str | list[str] | None = None,
    test_shards: str | list[str] | None = None,
    val_fraction: float = 0.2,
    class_names: list[str] | None = None,
    task: Literal["auto", "classification", "multilabel", "regression"] = "auto",
    image_key: str | None = None,
    label_key: str | None = None,
    channels: int | list[int] | None = None,
    pixels: Literal["uint8", "raw"] | None = None,
    npy_layout: Literal["HWC", "CHW"] | None = None,
    decoder: Literal["pil", "cv2"] | None = None,
    cache: Literal["none", "memory", "disk"] = "none",
    cache_dir: str | None = None,
    cache_max_gb: float | None = None,
    seed: int = 0,
    on_error: str = "raise",
):
    """Images in WebDataset ``.tar`` shards (local paths, brace patterns, a ``plugtrain shards`` folder, or
    ``pipe:`` / http URLs fetched once), indexed for random access.

    ``shards``: the train shards (``"data/train-{000000..000009}.tar"``, a list, or a folder written by
    ``plugtrain shards``: then its val/test splits too); ``val_shards`` / ``test_shards``: those splits' shards;
    without validation shards ``val_fraction`` of the train samples is held out (stratified, the run's seed).
    Per sample: the image is the first member with an image extension (or ``image_key``: ``"jpg"``,
    ``"jpg;png"``), the target the ``.cls`` member (classification, a class index), ``.json`` (multilabel, a JSON
    list of class indices or names: a multi-hot target) or ``.target`` (regression, a JSON number or list;
    ``label_key`` names another). ``class_names``, ``task``, ``channels``, ``pixels``, ``npy_layout`` and ``decoder``
    default to the ``plugtrain-shards.json`` beside the first shard, else ``"0"``.. (the largest index + 1),
    classification, 3, ``uint8``, ``HWC``, ``pil``.

    Indexing reads every tar header once (not the images): then each rank gets the same number of batches
    whatever the shard sizes, the order is a function of ``(seed, epoch)``, resume is exact mid-epoch and
    validation counts each sample once, as for every dataset. ``cache`` keeps decoded pixels as for
    ``imagefolder``; ``cache_dir`` is also where URLs are fetched to (default ``~/.cache/plugtrain``).

    Bad samples (no image or target member, a target that does not parse or is out of range, a duplicate member):
    ``on_error = "raise"`` stops naming ``shard:key``; ``"skip"`` drops and counts them. A missing, compressed,
    truncated or corrupt shard is always an error. Image decoding faults come at read time, naming
    ``shard:key.ext``.
    """
    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.cache import attach, check_params, default_cache_root

    check_common(on_error)  # channels and pixels: below, with the shards' metadata
    check_params(cache, cache_dir, cache_max_gb)
    if decoder is not None and decoder not in ("pil", "cv2"):
        raise error(f"webdataset: decoder must be 'pil' or 'cv2', not {decoder!r}")
    if task not in ("auto", *_TASKS):
        raise error(f"webdataset: task must be 'auto', 'classification', 'multilabel' or 'regression', not {task!r}")
    names, meta = _resolve(shards, val_shards, test_shards)
    meta = meta or {}
    if task == "auto":
        task = meta.get("task") or "classification"
    if task not in _TASKS:
        raise error(f"webdataset: task {task!r} of {META_NAME} is not 'classification', 'multilabel' or "
                    "'regression'")
    channels = channels or meta.get("channels") or 3
    pixels = pixels or meta.get("pixels") or "uint8"  # pixels, npy_layout: as imagefolder's
    npy_layout = npy_layout or meta.get("npy_layout") or "HWC"
    decoder = decoder or meta.get("decoder") or "pil"
    check_common(on_error, channels, pixels, npy_layout)
    if class_names is None and meta.get("class_names"):
        class_names = [str(c) for c in meta["class_names"]]
    image_exts = (tuple(e.strip().lower().lstrip(".") for e in image_key.split(";")) if image_key
                  else _IMAGE_EXTS + (("npy",) if pixels == "raw" else ()))
    label_ext = (label_key or _LABEL_EXT[task]).lower().lstrip(".")
    if "val" not in names:
        check_fraction(val_fraction, "webdataset")
    fetch_dir = (Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_root()) / "shards"

    indexed: dict[str, dict[str, Any]] = {}
    faults: dict[str, list[tuple[str, str, str]]] = {}
    for split, items in names.items():
        indexed[split], faults[split] = index_split(split, items, image_exts=image_exts, label_ext=label_ext,
                                                    task=task, fetch_dir=fetch_dir)

    # targets: class range, or the regression width
    if task == "classification":
        top = max((max(ix["targets"], default=-1) for ix in indexed.values()), default=-1)
        if class_names is None:
            class_names = [str(i) for i in range(top + 1)]
        n = len(class_names)
        for split, ix in indexed.items():
            bad = [j for j, t in enumerate(ix["targets"]) if not 0 <= t < n]
            for j in bad:
                faults[split].append((f"{ix['names'][ix['shard'][j]]}:{ix['keys'][j]}", ix["keys"][j],
                                      f"label {ix['targets'][j]} out of range: {n} classes (0..{n - 1})"))
            _drop(ix, bad)
    elif task == "multilabel":
        class_names = _multi_hot(indexed, faults, class_names)
    else:
        widths = {len(t) for ix in indexed.values() for t in ix["targets"]}
        if len(widths) > 1:
            raise error(f"webdataset: regression targets have different lengths ({sorted(widths)})")
        width = widths.pop() if widths else 1
        if class_names is None:
            class_names = ["target"] if width == 1 else [f"target{i}" for i in range(width)]
        elif len(class_names) != width:
            raise error(f"webdataset: {len(class_names)} target names but the targets have {width} values")

    splits: dict[str, ShardSplit] = {}
    for split, ix in indexed.items():
        bad = faults[split]
        if bad and on_error == "raise":
            where, _, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
            raise error(f"{where}: {reason}{more}; set data.on_error = \"skip\" to drop such samples")
        if not ix["keys"]:
            raise error(f"webdataset: no usable samples in the {split} shards ({names[split][0]}"
                        f"{', ...' if len(names[split]) > 1 else ''})")
        splits[split] = ShardSplit(ix["shards"], ix["names"], np.asarray(ix["shard"]), np.asarray(ix["offset"]),
                                   np.asarray(ix["size"]), np.asarray(ix["ext"]), ix["ext_names"],
                                   PathTable(ix["keys"]), ix["targets"], channels=channels, decoder=decoder,
                                   task=task, skipped=len(bad), problems=[(w, r) for w, _, r in bad],
                                   pixels=pixels, npy_layout=npy_layout)
    if "val" not in splits:
        train = splits["train"]
        stratify = task == "classification"
        targets = np.asarray(train.targets) if stratify else np.zeros(len(train))
        tr, va = split_indices(targets, val_fraction, seed, stratify)
        if len(va) == 0 or len(tr) == 0:
            raise error(f"webdataset: {len(train)} train samples are too few to hold out val_fraction = "
                        f"{val_fraction}; give val_shards")
        splits["train"], splits["val"] = train.subset(tr), train.subset(va)
        splits["val"].skipped, splits["val"].problems = 0, []
    attach(splits, cache, cache_dir, cache_max_gb, "webdataset")
    return DatasetSplits(train=splits["train"], val=splits["val"], test=splits.get("test"),
                         class_names=list(class_names), in_chans=channel_count(channels), task=task)


#: The target kinds the shards can hold, and the member each reads its target from by default.
_LABEL_EXT = {"classification": "cls", "multilabel": "json", "regression": "target"}
_TASKS = tuple(_LABEL_EXT)


def _multi_hot(indexed: dict[str, dict[str, Any]], faults: dict[str, list[tuple[str, str, str]]],
               class_names: list[str] | None) -> list[str]:
    """Multilabel targets (lists of class indices or names) made multi-hot in place; the class names (given, else
    the sorted names of the labels, else ``"0"``.. up to the largest index); a label out of range or unknown is a
    fault of its sample."""
    from plugtrain.core.errors import did_you_mean

    labels = [v for ix in indexed.values() for t in ix["targets"] for v in t]
    if class_names is None:
        if any(isinstance(v, str) for v in labels):
            class_names = sorted({str(v) for v in labels})
        else:
            class_names = [str(i) for i in range(max(labels, default=-1) + 1)]
    by_name = {n: i for i, n in enumerate(class_names)}
    n = len(class_names)
    for split, ix in indexed.items():
        bad, hot = [], []
        for j, t in enumerate(ix["targets"]):
            row = np.zeros(n, dtype=np.float32)
            for v in t:
                k = by_name.get(v, -1) if isinstance(v, str) else v
                if not 0 <= k < n:
                    why = (f"unknown class name {v!r}.{did_you_mean(v, class_names)}" if isinstance(v, str)
                           else f"label {v} out of range: {n} classes (0..{n - 1})")
                    faults[split].append((f"{ix['names'][ix['shard'][j]]}:{ix['keys'][j]}", ix["keys"][j], why))
                    bad.append(j)
                    break
                row[k] = 1.0
            hot.append(row)
        ix["targets"] = hot
        _drop(ix, bad)
    return class_names


def _drop(ix: dict[str, Any], bad: list[int]) -> None:
    if not bad:
        return
    drop = set(bad)
    for k in ("shard", "offset", "size", "ext", "keys", "targets"):
        ix[k] = [v for j, v in enumerate(ix[k]) if j not in drop]


def read_image(path: str | os.PathLike[str], *, in_chans: int, params: Mapping[str, Any] | None = None) -> Any:
    """One image file as this dataset's samples come out: the decoder of ``decoder`` (or of the shards' metadata)."""
    decoder = param(webdataset, params, "decoder")
    meta: dict[str, Any] = {}
    if params and params.get("shards") is not None:
        with contextlib.suppress(Exception):
            meta = _resolve(params["shards"], None, None)[1] or {}
    given = {k: v for k, v in (params or {}).items() if v is not None}
    return read_as(webdataset, path, in_chans, {"npy_layout": "HWC", **meta, **given}, decoder or meta.get("decoder"))


webdataset.read_image = read_image
webdataset.validate = validate  # type: ignore[attr-defined]  # the datasets plugin's PLUGTRAIN_VALIDATE calls it
