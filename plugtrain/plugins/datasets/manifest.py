"""``csv``: images listed in a csv manifest (``path,label``, ``path,labels`` or ``path,target``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from plugtrain.plugins.datasets.common import (
    check_common,
    check_fraction,
    error,
    existing_file,
    file_splits,
    fraction_split,
    read_as,
    require_samples,
    suggest,
)


class _Row:
    __slots__ = ("where", "path", "values")

    def __init__(self, where: str, path: str, values: list[str]) -> None:
        self.where, self.path, self.values = where, path, values


def _read_manifest(csv_path: str, root: str | None, task: str, target_columns: list[str] | None):
    """Header check and raw rows of one manifest: ``(rows, faults, value_columns)``; faults are per-row."""
    import csv as csvmod

    csv_path = existing_file(csv_path, "csv manifest")
    base = os.path.expanduser(root) if root else os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csvmod.reader(f)
            header = next(reader, None)
            if header is None:
                raise error(f"csv manifest '{csv_path}' is empty (expected a header such as 'path,label')")
            header = [h.strip() for h in header]
            if "path" not in header:
                raise error(
                    f"{csv_path}:1: the header needs a 'path' column and a 'label' column (classification), a "
                    f"'labels' column (multilabel) or target column(s) (regression); found: "
                    f"{', '.join(header) or '(nothing)'}"
                )
            if task == "auto":
                task = "classification" if "label" in header else "multilabel" if "labels" in header else "regression"
            if task == "multilabel":
                if "labels" not in header:
                    raise error(
                        f"{csv_path}:1: a multilabel manifest needs a 'labels' column; found: {', '.join(header)}"
                    )
                columns = ["labels"]
            elif task == "classification":
                if "label" not in header:
                    raise error(
                        f"{csv_path}:1: a classification manifest needs a 'label' column; found: {', '.join(header)}"
                    )
                columns = ["label"]
            else:
                columns = list(target_columns) if target_columns else [h for h in header if h not in ("path", "")]
                missing = [c for c in columns if c not in header]
                if not columns or missing:
                    what = f"no column(s) {', '.join(missing)}" if missing else "no target column"
                    raise error(f"{csv_path}:1: regression manifest has {what}; found: {', '.join(header)}")
            path_i = header.index("path")
            value_i = [header.index(c) for c in columns]
            rows: list[_Row] = []
            faults: list[tuple[str, str, str]] = []  # (where, path, reason)
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                where = f"{csv_path}:{reader.line_num}"
                if len(record) != len(header):
                    faults.append((where, "", f"expected {len(header)} fields, found {len(record)}"))
                    continue
                rel = record[path_i].strip()
                if not rel:
                    faults.append((where, "", "empty path"))
                    continue
                rows.append(
                    _Row(where, os.path.join(base, os.path.expanduser(rel)), [record[i].strip() for i in value_i])
                )
    except UnicodeDecodeError as exc:
        raise error(f"csv manifest '{csv_path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csvmod.Error as exc:
        raise error(f"{csv_path}: malformed csv: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read csv manifest '{csv_path}': {exc.strerror or exc}") from None
    return rows, faults, columns, task


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def csv_manifest(
    csv: str,
    val_csv: str | None = None,
    test_csv: str | None = None,
    val_fraction: float = 0.2,
    root: str | None = None,
    task: Literal["auto", "classification", "multilabel", "regression"] = "auto",
    separator: str = ";",
    target_columns: list[str] | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    channels: int | list[int] = 3,
    pixels: Literal["uint8", "raw"] = "uint8",
    npy_layout: Literal["HWC", "CHW"] = "HWC",
    check_files: bool = True,
    decoder: Literal["pil", "cv2"] = "pil",
    cache: Literal["none", "memory", "disk"] = "none",
    cache_dir: str | None = None,
    cache_max_gb: float | None = None,
    seed: int = 0,
    on_error: str = "raise",
):
    """Images listed in a csv manifest: a header ``path,label`` (classification), ``path,labels`` (multilabel) or
    ``path,target`` (regression).

    ``path`` is relative to the manifest's folder (or to ``root`` when given), or absolute. ``task = "auto"`` reads a
    ``label`` column as classification and otherwise every other column (or ``target_columns``) as float regression
    targets: one column gives a float target, several a float vector, and ``class_names`` of the splits are the
    target column names (so their count is the model's output width).

    Classification labels are class indices (integers; ``num_classes`` defaults to the largest + 1 and the class names
    to ``"0"``, ``"1"``, ...) or class names (``class_names`` defaults to the distinct names of all manifests,
    sorted). With ``class_names`` given, labels are names from it or indices into it.

    Multilabel (a ``labels`` column): each row's labels are class names (or, with ``class_names`` given, names or
    indices into it) joined by ``separator`` (``"cat;dog"``; an empty cell: none of the classes); the class names
    default to the sorted union of all manifests' labels. Targets are multi-hot float vectors, one value per class.

    Validation comes from ``val_csv``, or else ``val_fraction`` of ``csv`` (stratified for classification, random
    otherwise) with the run's seed; ``test_csv`` is optional.

    Bad rows (a file that does not exist when ``check_files``, a label out of range or not a number, a row with the
    wrong number of fields): ``on_error = "raise"`` stops with the ``csv:line`` and the path; ``"skip"`` drops them
    and counts them in the split's ``skipped`` (rows of ``csv`` count in the train split). Image decoding faults come
    at read time as :class:`~plugtrain.core.data.SampleError`.

    ``cache``: ``"none"`` (default: decode every file every epoch, nothing kept), ``"memory"`` (decoded pixels in
    ``/dev/shm``, one copy per machine, removed when the last process exits) or ``"disk"`` (in ``cache_dir``, kept
    for later runs). Each image is decoded once, on first touch in the DataLoader workers; later epochs only
    augment. Batches are bitwise those of ``"none"``. The size is checked first: a cache that does not fit (or
    exceeds ``cache_max_gb``, for all splits together) is refused with the size and the free room. See
    :mod:`plugtrain.plugins.datasets.cache`.
    """
    import math

    from plugtrain.plugins.datasets.cache import check_params

    check_common(on_error, channels, pixels, npy_layout)  # pixels, npy_layout: as imagefolder's
    check_params(cache, cache_dir, cache_max_gb)
    if task not in ("auto", "classification", "multilabel", "regression"):
        raise error(f"csv dataset: task must be 'auto', 'classification', 'multilabel' or 'regression', not {task!r}")
    if not isinstance(separator, str) or not separator or separator.isspace() or separator == ",":
        raise error(f"csv dataset: separator must be a character other than ',' and white space, not {separator!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise error(f"csv dataset: num_classes must be a positive integer, not {num_classes!r}")
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise error(f"csv dataset: {len(class_names)} class_names but num_classes = {num_classes}")
    if val_csv is None:
        check_fraction(val_fraction, f"csv manifest '{csv}'")

    manifests = {"train": csv, "val": val_csv, "test": test_csv}
    read: dict[str, tuple[list[_Row], list[tuple[str, str, str]]]] = {}
    columns: list[str] = []
    for name, path in manifests.items():
        if path is None:
            continue
        rows, faults, cols, found_task = _read_manifest(path, root, task, target_columns)
        if task == "auto":
            task = found_task
        if columns and cols != columns:
            raise error(f"csv manifest '{path}' has columns {cols}, but '{csv}' has {columns}")
        columns = cols
        read[name] = (rows, faults)

    # Label (or target) parsing rules.
    names: list[str]
    if task == "classification":
        raw = [r.values[0] for rows, _ in read.values() for r in rows if r.values[0]]
        if class_names is not None:
            names = [str(c) for c in class_names]
        elif raw and all(_as_int(v) is not None for v in raw):
            top = max(_as_int(v) for v in raw)  # type: ignore[type-var]
            names = [str(i) for i in range(num_classes if num_classes is not None else max(top, 0) + 1)]
        else:
            names = sorted(set(raw))
            if num_classes is not None and len(names) != num_classes:
                raise error(
                    f"csv manifest '{csv}': the labels hold {len(names)} class names but num_classes = {num_classes}"
                )
        by_name = {n: i for i, n in enumerate(names)}
        by_int = class_names is None and all(_as_int(v) is not None for v in raw)

        def parse(values: list[str]) -> tuple[Any, str]:
            label = values[0]
            if not label:
                return None, "empty label"
            if not by_int and label in by_name:
                return by_name[label], ""
            index = _as_int(label)
            if index is None:
                return None, f"unknown class name {label!r}." + suggest(label, names)
            if not 0 <= index < len(names):
                return None, f"label {index} out of range: {len(names)} classes (0..{len(names) - 1})"
            return index, ""
    elif task == "multilabel":
        names, parse = _multilabel_parser(read, separator, class_names, num_classes, csv)
    else:
        names = list(columns)

        def parse(values: list[str]) -> tuple[Any, str]:
            out = []
            for col, text in zip(columns, values, strict=True):
                try:
                    value = float(text)
                except ValueError:
                    return None, f"target {col} = {text!r} is not a number"
                if not math.isfinite(value):
                    return None, f"target {col} = {text!r} is not finite"
                out.append(value)
            return out, ""

    indexed: dict[str, tuple[list[str], list[Any]]] = {}
    problems: dict[str, list[tuple[str, str]]] = {}
    skipped: dict[str, int] = {}
    for name, (rows, faults) in read.items():
        paths: list[str] = []
        targets: list[Any] = []
        bad = list(faults)
        for r in rows:
            target, reason = parse(r.values)
            if not reason and check_files and not os.path.isfile(r.path):
                reason = "file not found" if not os.path.exists(r.path) else "not a file"
            if reason:
                bad.append((r.where, r.path, reason))
                continue
            paths.append(r.path)
            targets.append(target)
        if bad:
            if on_error == "raise":
                where, path, reason = min(bad, key=lambda b: _line_key(b[0]))
                more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
                raise error(f"{where}: {path + ': ' if path else ''}{reason}{more}")
            problems[name] = [
                (w, f"{p + ': ' if p else ''}{why}") for w, p, why in sorted(bad, key=lambda b: _line_key(b[0]))
            ]
            skipped[name] = len(bad)
        require_samples(paths, manifests[name], name)
        indexed[name] = (paths, targets)

    if "val" not in indexed:
        paths, targets = indexed.pop("train")
        indexed.update(fraction_split(paths, targets, val_fraction, seed, stratify=task == "classification"))
        require_samples(indexed["val"][0], csv, "val")
    return file_splits(indexed, names, channels, decoder, task, problems, skipped, cache=cache, cache_dir=cache_dir,
                       cache_max_gb=cache_max_gb, dataset="csv", pixels=pixels, npy_layout=npy_layout)


def _multilabel_parser(read: dict[str, Any], separator: str, class_names: list[str] | None, num_classes: int | None,
                       csv: str) -> tuple[list[str], Any]:
    """The class names of a multilabel manifest and the parser of one row's ``labels`` cell to a multi-hot list."""
    def split(cell: str) -> list[str]:
        return [part.strip() for part in cell.split(separator) if part.strip()]

    if class_names is not None:
        names = [str(c) for c in class_names]
    else:
        names = sorted({label for rows, _ in read.values() for r in rows for label in split(r.values[0])})
        if num_classes is not None and len(names) != num_classes:
            raise error(f"csv manifest '{csv}': the labels hold {len(names)} class names but num_classes = "
                        f"{num_classes}")
        if not names:
            raise error(f"csv manifest '{csv}': no row has a label (the 'labels' column is empty everywhere)")
    by_name = {n: i for i, n in enumerate(names)}
    by_index = class_names is not None

    def parse(values: list[str]) -> tuple[Any, str]:
        hot = [0.0] * len(names)
        for label in split(values[0]):
            index = by_name.get(label)
            if index is None and by_index and _as_int(label) is not None:
                index = _as_int(label)
                if not 0 <= index < len(names):
                    return None, f"label {index} out of range: {len(names)} classes (0..{len(names) - 1})"
            if index is None:
                return None, f"unknown class name {label!r}." + suggest(label, names)
            hot[index] = 1.0
        return hot, ""

    return names, parse


def _line_key(where: str) -> tuple[str, int]:
    file, _, line = where.rpartition(":")
    return file, int(line) if line.isdigit() else 0


def read_image(path: str | os.PathLike[str], *, in_chans: int, params: Mapping[str, Any] | None = None) -> Any:
    """One image file as this dataset's samples come out: its decoder, its pixels mode and channels."""
    return read_as(csv_manifest, path, in_chans, params)


csv_manifest.read_image = read_image
