"""``plugtrain shards SOURCE --out DIR [--shard-size N] [--set K=V] [--val-fraction F] [--seed S] [--overwrite]``.

Writes WebDataset ``.tar`` shards of a data set, one set per split: ``DIR/train-000000.tar``, ...,
``DIR/val-000000.tar``, ... and ``DIR/plugtrain-shards.json`` (class names, task, channels, decoder, pixels and
``npy_layout`` of raw-pixel sources, the shards and sample counts of each split), which the ``webdataset`` dataset reads (``shards = "DIR"``).

``SOURCE`` is a run spec (its ``[data]`` dataset, built as training builds it, with its seed: a held-out
validation split comes out the same), an image folder (``imagefolder`` with ``--val-fraction`` and ``--seed``) or a
csv manifest. Samples keep their split's order, so ``webdataset`` returns the very samples in the very order the
source did and a run on the shards sees the same batches as a run on the source (same seed). A sample is stored as
``<index>.<ext>`` (the image file's own bytes, not re-encoded: the same decoder gives the same pixels) plus
``<index>.cls`` (the class index) or ``<index>.target`` (a JSON list of the regression targets); samples of data
sets without files (``idx``, ``sklearn-digits``) are stored as lossless PNG of their pixels.

Each shard is written under a temporary name and renamed when complete, and ``plugtrain-shards.json`` comes last:
a folder whose writing was interrupted has no metadata, and ``webdataset`` refuses it. Tar members carry a fixed
mtime, so the same data set gives byte-identical shards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.atomic import atomic_open, write_atomic
from plugtrain.core.errors import PlugtrainError

SPLITS = ("train", "val", "test")


def _source(source: str, overrides: Sequence[str], val_fraction: float, seed: int) -> tuple[Any, str, str, Any]:
    """``(DatasetSplits, decoder, on_error, task)`` of ``source``: the task that writes the targets is a spec's own,
    else the first registered task that trains on the dataset's targets."""
    from plugtrain.core.registry import get_registry
    from plugtrain.core.runtime import build
    from plugtrain.core.task import task_for_dataset

    path = Path(source)
    if not path.exists():
        raise PlugtrainError(f"shards: '{source}' does not exist (give a run spec, an image folder or a csv manifest)")
    if path.is_dir() or path.suffix.lower() == ".csv":
        if overrides:
            raise PlugtrainError("shards: --set applies to a run spec, not to a folder or a csv manifest")
        name, params = ("imagefolder", {"root": source}) if path.is_dir() else ("csv", {"csv": source})
        params["val_fraction"] = val_fraction
        splits = get_registry().get("datasets", name).build(params, seed=seed, on_error="raise", image_size=None)
        return splits, "pil", "raise", task_for_dataset(splits.task)
    from plugtrain.core.spec import load_spec

    spec = load_spec(source, list(overrides))
    if spec.data.dataset.params.get("cache", "none") != "none":
        spec.data.dataset.params["cache"] = "none"  # the files are copied, not decoded: no cache to fill
    splits = build.build_dataset(spec)
    return splits, str(spec.data.dataset.params.get("decoder") or "pil"), spec.data.on_error, spec.task_object


def _pixels(split: Any) -> dict[str, Any]:
    """How the shards' image members decode as the source's samples did: ``pixels`` (``"raw"``: 16-bit, float, any
    channel count, as stored) and ``npy_layout`` of the source's files, for ``webdataset`` to read them back."""
    pixels = getattr(split, "pixels", None) or "uint8"
    return {"pixels": pixels, "npy_layout": getattr(split, "npy_layout", None) or "HWC"} if pixels == "raw" else {
        "pixels": pixels}


def _encode_png(image: Any) -> bytes:
    import numpy as np
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sample(split: Any, i: int, targets: list[Any] | None) -> tuple[str, bytes, Any]:
    """``(extension, image bytes, target)`` of sample ``i``: the file's bytes where the split has files."""
    from plugtrain.plugins.datasets.splits import ImageFileSplit
    from plugtrain.plugins.datasets.webdataset import ShardSplit

    if isinstance(split, ImageFileSplit):
        path = split.path(i)
        ext = os.path.splitext(path)[1].lower().lstrip(".") or "img"
        with open(path, "rb") as f:
            return ext, f.read(), targets[i] if targets is not None else split[i][1]
    if isinstance(split, ShardSplit):
        return split.ext_names[int(split._ext[i])], split._read(i), targets[i] if targets is not None else None
    image, target = split[i]
    return "png", _encode_png(image), target


def _write_shard(path: Path, samples: list[tuple[str, str, bytes, str, bytes]]) -> int:
    import webdataset as wds

    with atomic_open(path, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=0.0) as w:
            for key, ext, data, label_ext, label in samples:
                w.write({"__key__": key, ext: data, label_ext: label})
    return path.stat().st_size


def _clear(out: Path, overwrite: bool) -> None:
    from plugtrain.plugins.datasets.webdataset import META_NAME

    ours = [p for p in out.iterdir() if p.name == META_NAME or (p.suffix == ".tar" and p.name.split("-")[0] in SPLITS)
            or ".tar.tmp-" in p.name]
    if not ours and not any(out.iterdir()):
        return
    if not overwrite:
        raise PlugtrainError(f"shards: '{out}' is not empty; give another --out, or --overwrite to replace the shards "
                             "in it")
    meta = out / META_NAME
    with contextlib.suppress(FileNotFoundError):
        meta.unlink()  # first: a folder half replaced has no metadata
    for p in ours:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _write_split(split: Any, name: str, task: Any, out_dir: Path, shard_size: int, on_error: str) -> dict[str, Any]:
    """The shards of one split, in its order; returns its entry of ``plugtrain-shards.json``."""
    targets = getattr(split, "targets", None)
    targets = list(targets) if targets is not None else None
    n = len(split)
    width = max(6, len(str(max(n // shard_size, 1))))
    files: list[str] = []
    counts: list[int] = []
    skipped: list[str] = []
    pending: list[tuple[str, str, bytes, str, bytes]] = []
    last = time.monotonic()
    for i in range(n):
        try:
            ext, data, target = _sample(split, i, targets)
        except OSError as exc:
            where = split.path(i) if hasattr(split, "path") else f"{name} sample #{i}"
            if on_error != "skip":
                raise PlugtrainError(f"shards: {where}: cannot read: {exc.strerror or exc} (data.on_error = "
                                     "\"skip\" leaves such files out)") from None
            skipped.append(where)
            continue
        label_ext, label = task.shard_target(target)  # the task writes its target
        pending.append((f"{i:08d}", ext, data, label_ext, label))
        if len(pending) >= shard_size or i == n - 1:
            fname = f"{name}-{len(files):0{width}d}.tar"
            _write_shard(out_dir / fname, pending)
            files.append(fname)
            counts.append(len(pending))
            pending = []
        if time.monotonic() - last > 10:
            last = time.monotonic()
            console.echo(f"  {name}: {i + 1:,} / {n:,} samples")
    if pending:  # the last samples, when the very last one was left out
        fname = f"{name}-{len(files):0{width}d}.tar"
        _write_shard(out_dir / fname, pending)
        files.append(fname)
        counts.append(len(pending))
    if not files:
        raise PlugtrainError(f"shards: the {name} split has no readable sample")
    pattern = f"{name}-{{{0:0{width}d}..{len(files) - 1:0{width}d}}}.tar" if len(files) > 1 else files[0]
    note = f" ({len(skipped)} unreadable files left out, the first: {skipped[0]})" if skipped else ""
    console.echo(f"{name}: {sum(counts):,} samples in {len(files)} shard(s): {out_dir / pattern}{note}")
    return {"shards": files, "samples": sum(counts), "samples_per_shard": counts, "pattern": pattern}


def run(source: str, *, out: str, shard_size: int = 1000, overrides: Sequence[str] = (), val_fraction: float = 0.2,
        seed: int = 0, overwrite: bool = False) -> int:
    """Write the shards of ``source`` into ``out``; exit code 0."""
    from plugtrain.plugins.datasets.webdataset import META_FORMAT, META_NAME

    if shard_size < 1:
        raise PlugtrainError(f"shards: --shard-size must be at least 1, not {shard_size}")
    splits, decoder, on_error, task = _source(source, overrides, val_fraction, seed)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise PlugtrainError(f"shards: --out '{out}' is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir, overwrite)
    channels = getattr(splits.train, "channels", None) or splits.in_chans
    channels = [int(c) for c in channels] if isinstance(channels, (list, tuple)) else int(channels)  # [0, 3]: kept
    meta: dict[str, Any] = {"format": META_FORMAT, "version": 1, "task": splits.task, "class_names": list(splits.class_names),
                            "channels": channels, "decoder": decoder, **_pixels(splits.train), "source": str(source),
                            "splits": {}}
    t0 = time.monotonic()
    for name in SPLITS:
        split = getattr(splits, name)
        if split is not None:
            meta["splits"][name] = _write_split(split, name, task, out_dir, shard_size, on_error)
    write_atomic(out_dir / META_NAME, json.dumps(meta, indent=2) + "\n")
    console.echo(f"wrote {out_dir / META_NAME} in {time.monotonic() - t0:.1f} s; train on the shards with:")
    console.echo("  [data]")
    console.echo('  dataset = "webdataset"')
    console.echo(f'  shards = "{out_dir}"   # or a pattern: shards = "{out_dir / meta["splits"]["train"]["pattern"]}"')
    return 0
