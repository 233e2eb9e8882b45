"""What the built-in datasets share: parameter and path checks, the seeded train/val split of file lists, and the
assembly of file splits into a :class:`~plugtrain.core.data.DatasetSplits`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any


def error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def check_common(on_error: str, channels: Any = None, pixels: str = "uint8", npy_layout: str = "HWC") -> None:
    """The parameters every image dataset shares: ``on_error``, ``channels`` (1 or 3 with ``pixels = "uint8"``; any
    count or a list of channel indices with ``"raw"``), ``pixels`` and ``npy_layout``."""
    from plugtrain.plugins.datasets.decode import NPY_LAYOUTS, PIXELS, channels_problem

    if on_error not in ("raise", "skip"):
        raise error(f"data.on_error must be 'raise' or 'skip', not {on_error!r}")
    if pixels not in PIXELS:
        raise error(f"dataset parameter pixels must be one of {', '.join(map(repr, PIXELS))}, not {pixels!r}"
                    + suggest(str(pixels), list(PIXELS)))
    if npy_layout not in NPY_LAYOUTS:
        raise error(f"dataset parameter npy_layout must be one of {', '.join(map(repr, NPY_LAYOUTS))}, not "
                    f"{npy_layout!r}")
    problem = channels_problem(channels, pixels) if channels is not None else None
    if problem:
        raise error(f"dataset parameter {problem}")


def check_fraction(val_fraction: float, what: str) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise error(f"{what}: val_fraction must be a number between 0 and 1 (exclusive), not {val_fraction!r}")


def existing_dir(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise error(f"{what} '{path}' does not exist")
    if not os.path.isdir(path):
        raise error(f"{what} '{path}' is not a directory")
    return path


def existing_file(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise error(f"{what} '{path}' does not exist")
    if os.path.isdir(path):
        raise error(f"{what} '{path}' is a directory, not a file")
    return path


def subdirs(folder: str) -> list[str]:
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


def require_samples(paths: list[str], where: str, split: str = "") -> None:
    if not paths:
        which = f" for the {split} split" if split else ""
        raise error(f"no usable images found in '{where}'{which}")


def fraction_split(paths: list[str], targets: list[Any], val_fraction: float, seed: int, stratify: bool = True):
    import numpy as np

    from plugtrain.plugins.datasets.splits import split_indices

    tr, va = split_indices(np.asarray(targets) if stratify else np.zeros(len(targets)), val_fraction, seed, stratify)
    return {
        "train": ([paths[i] for i in tr], [targets[i] for i in tr]),
        "val": ([paths[i] for i in va], [targets[i] for i in va]),
    }


def file_splits(indexed, class_names, channels, decoder, task, problems, skipped, *, cache="none", cache_dir=None,
                cache_max_gb=None, dataset="", pixels="uint8", npy_layout="HWC"):
    from plugtrain.core.data import DatasetSplits
    from plugtrain.plugins.datasets.cache import attach
    from plugtrain.plugins.datasets.decode import channel_count
    from plugtrain.plugins.datasets.splits import ImageFileSplit

    splits = {
        name: ImageFileSplit(
            paths,
            targets,
            channels=channels,
            decoder=decoder,
            task=task,
            skipped=skipped.get(name, 0),
            problems=problems.get(name, ()),
            pixels=pixels,
            npy_layout=npy_layout,
        )
        for name, (paths, targets) in indexed.items()
    }
    attach(splits, cache, cache_dir, cache_max_gb, dataset)
    return DatasetSplits(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        class_names=list(class_names),
        in_chans=channel_count(channels),
        task=task,
    )


def suggest(word: str, names: list[str]) -> str:
    from plugtrain.core.errors import did_you_mean

    return did_you_mean(word, names)


def param(factory: Callable[..., Any], params: Mapping[str, Any] | None, name: str) -> Any:
    """The dataset parameter ``name`` as the spec gives it, else the factory's default (for ``read_image``)."""
    if params and name in params:
        return params[name]
    return inspect.signature(factory).parameters[name].default


def read_as(factory: Callable[..., Any], path: Any, in_chans: int, params: Mapping[str, Any] | None,
            decoder: str | None = None) -> Any:
    """One image file read as ``factory``'s samples come out (``read_image`` of the file datasets, for ``predict``):
    its ``decoder``, and with ``pixels = "raw"`` its ``channels`` and ``npy_layout``."""
    from plugtrain.plugins.datasets.decode import read_image_file

    decoder = decoder or param(factory, params, "decoder") or "pil"
    if param(factory, params, "pixels") != "raw":
        return read_image_file(path, in_chans, decoder)
    channels = param(factory, params, "channels") or in_chans
    return read_image_file(path, channels, decoder, "raw", param(factory, params, "npy_layout"))
