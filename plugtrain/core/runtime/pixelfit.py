"""The pre-flight's checks of scientific images (any dtype, any channel count): that a data set's files share one
dtype and channel count, and that every transform of the pipelines can take such images.

* :func:`check_files`: a split that reads files with their pixels as stored offers ``pixel_format(i)`` (the dtype and
  channel count of file ``i``, from its header only); every file of every split is compared with the training
  split's first, and the first that differs is named.
* :func:`check_transforms`: for data that is not 8-bit grey or RGB, each transform of the pipelines (compositions
  opened, each leaf on its own, made to apply with ``p = 1``) is tried on an image of the data's size, dtype and
  channel count, and on an 8-bit RGB image of the same size; one that works on the latter but raises on the former,
  or returns another dtype or channel count (a colour transform that reads the pixels as 8-bit values), is refused,
  named by its place in the spec. Nothing of the run changes: the transforms tried are copies.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError, first_line


def check(built: Any) -> None:
    """Both checks on a built run (before training, nothing written)."""
    check_files(built.splits)
    sample = first_image(built.splits.train)
    if sample is not None:
        check_transforms(built.spec, built, sample)


def first_image(split: Any) -> Any:
    """The first readable raw image (``HxWxC`` array) of ``split`` among its first 16 samples, or None."""
    import numpy as np

    for i in range(min(len(split), 16)):
        try:
            image = np.asarray(split[i][0])
        except (SampleError, OSError, ValueError):
            continue
        return image[..., None] if image.ndim == 2 else image
    return None


def check_files(splits: Any) -> None:
    """Every file of every split has the dtype and channel count of the training split's first file, else one
    PlugtrainError naming the first file that differs (and the first file)."""
    reference: tuple[str, tuple[str, int]] | None = None
    for name in ("train", "val", "test"):
        split = getattr(splits, name, None)
        fmt = getattr(split, "pixel_format", None)
        if split is None or not callable(fmt) or getattr(split, "pixels", "raw") != "raw":
            continue
        for i in range(len(split)):
            got = fmt(i)
            if got is None:
                continue  # an unreadable header: decoding the file reports it, or skips it
            if reference is None:
                reference = (split.path(i), got)
            elif got != reference[1]:
                raise PlugtrainError(
                    f"{split.path(i)}: {_describe(got)}, but the data set's first file {reference[0]} is "
                    f"{_describe(reference[1])}: the images of a data set must share one dtype and channel count "
                    f"({name} split, checked before training)")


def _describe(fmt: tuple[str, int]) -> str:
    return f"{fmt[0]} with {fmt[1]} channel(s)"


def check_transforms(spec: Any, built: Any, sample: Any) -> None:
    """Refuse a transform of the train or val pipeline that cannot take images like ``sample`` (see the module
    docstring); 8-bit grey and RGB data are not checked (every transform is meant for them)."""
    import numpy as np

    if sample.dtype == np.uint8 and sample.shape[-1] in (1, 3):
        return
    h, w, c = sample.shape
    rng = np.random.default_rng(0)
    if sample.dtype.kind == "f":
        trial = rng.random((h, w, c), dtype=np.float32).astype(sample.dtype)
    else:
        trial = rng.integers(0, int(np.iinfo(sample.dtype).max) + 1, (h, w, c)).astype(sample.dtype)
    baseline = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    what = f"{c}-channel {sample.dtype} images"
    for split, pipeline in (("train", built.train_transform), ("val", built.val_transform)):
        for where, leaf in _leaves(pipeline, f"augmentations.{split}", spec, split):
            if _apply(leaf, baseline) is not None:
                continue  # not a transform an image alone can go through (or it fails anyway): not ours to say
            problem = _apply(leaf, trial)
            if problem:
                raise PlugtrainError(f"[{where}] {type(leaf).__name__} cannot take the data's {what}: {problem}. "
                                     "Use transforms that work on any channel count and dtype (README: "
                                     "\"Your own images\")")


def _leaves(pipeline: Any, where: str, spec: Any, split: str) -> list[tuple[str, Any]]:
    """``(place in the spec, transform)`` of every leaf transform of ``pipeline``; a leaf beyond the spec's own
    (the resize) is named by the pipeline."""
    if pipeline is None:
        return []
    out: list[tuple[str, Any]] = []

    def walk(t: Any, place: str) -> None:
        children = getattr(t, "transforms", None)
        if (isinstance(children, (list, tuple)) and children
                and not any(inspect.isroutine(c) for c in children)):  # a composition (not ColorJitter's functions)
            for k, child in enumerate(children):
                walk(child, f"{where}[{k}]" if place == where else f"{place}.transforms[{k}]")
            return
        out.append((place, t))

    walk(pipeline, where)
    count = len(getattr(spec.augmentations, split))
    return [(p if _index(p, where) < count else where, t) for p, t in out]


def _index(place: str, where: str) -> int:
    rest = place[len(where):]
    try:
        return int(rest[1:rest.index("]")]) if rest.startswith("[") else 10**9
    except ValueError:
        return 10**9


def _apply(leaf: Any, image: Any) -> str | None:
    """Why ``leaf`` (applied for sure, on a copy) fails on ``image`` or changes its dtype or channel count; None."""
    import warnings

    import numpy as np

    trial = copy.deepcopy(leaf)
    if isinstance(getattr(trial, "p", None), (int, float)):
        trial.p = 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.asarray(trial(image=image.copy())["image"])
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"{type(exc).__name__}: {first_line(exc).rstrip('.')}"
    if out.ndim == 2:
        out = out[..., None]
    if out.dtype != image.dtype:
        return f"it turns {image.dtype} pixels into {out.dtype} (it reads them as another range of values)"
    if out.shape[-1] != image.shape[-1]:
        return f"it turns {image.shape[-1]} channel(s) into {out.shape[-1]}"
    return None
