"""k-fold cross-validation splits of a training split: stratified, seeded, a pure function of the targets.

:func:`fold_split` is all a run needs to train on fold ``k`` of ``K``: the positions (into the train split, or into
its ``class_subset`` selection) to train on and the ones to validate on. Every sample is in exactly one validation
fold; class targets (integers) are stratified so that each class is dealt evenly over the folds (per-class
counts differ by at most one between folds, and fold sizes by at most one); float targets (real values) are
stratified by value: sorted, cut into consecutive blocks of ``K`` and each block dealt one sample per fold. The
assignment depends on ``(targets, K, seed)`` only, so the K runs of one cross-validation, on any machine, see
disjoint validation folds that together cover the split. Class targets need at least K samples of every class (each
fold validates on every class): fewer is an error before any fold is trained. A task may say what its folds are dealt
by (``Task.fold_targets``); vector targets, or none, give random folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plugtrain.core.errors import PlugtrainError

#: Mixed into the seed so that the folds do not reuse the random stream of the train/val split of the same seed.
_SALT = 0xF01D


def fold_assignment(targets: Sequence[Any], folds: int, seed: int,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
    """The fold (0-based) of every position of ``targets``. Class targets (integers) need at least ``folds`` samples
    of every class, so that every fold validates on every class: fewer is an error naming the smallest class
    (``class_names[label]`` when given) and the largest number of folds that works."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise PlugtrainError(f"cross-validation needs folds >= 2, not {folds!r}")
    t = np.asarray(list(targets))
    n = len(t)
    if n < folds:
        raise PlugtrainError(f"cross-validation with {folds} folds needs at least {folds} training samples; the train "
                             f"split has {n}")
    if t.ndim == 1 and t.dtype.kind in "iub":
        _check_classes(t, folds, class_names)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _SALT])
    assign = np.empty(n, dtype=np.int64)
    if t.ndim == 1 and (t.dtype.kind in "iub" or (t.dtype.kind == "f" and np.all(np.mod(t, 1) == 0))):
        dealt = 0
        for cls in np.unique(t):  # sorted: the order of classes does not depend on the order of samples
            idx = np.flatnonzero(t == cls)
            rng.shuffle(idx)
            assign[idx] = (dealt + np.arange(len(idx))) % folds  # go on dealing where the last class stopped
            dealt += len(idx)
    elif t.ndim == 1 and t.dtype.kind == "f":
        order = np.argsort(t + 0.0, kind="stable")
        for start in range(0, n, folds):
            block = order[start:start + folds]
            assign[block] = rng.permutation(folds)[: len(block)]
    else:  # vector targets: no order to stratify on
        assign[rng.permutation(n)] = np.arange(n) % folds
    return assign


def _check_classes(t: np.ndarray, folds: int, class_names: Sequence[str] | None) -> None:
    """Refuse ``folds`` above the smallest class's count: a stratified fold would validate on none of that class."""
    labels, counts = np.unique(t, return_counts=True)
    i = int(np.argmin(counts))  # the first of equals: the smallest label
    label, count = labels[i].item(), int(counts[i])
    if count >= folds:
        return
    name = f"class {label}"
    if class_names is not None and isinstance(label, int) and 0 <= label < len(class_names):
        name = f"class {class_names[label]!r} (label {label})"
    n = "1 sample" if count == 1 else f"{count} samples"
    fix = (f"use at most {count} folds (stratified folds put every class in every fold's validation)" if count >= 2
           else "cross-validation needs at least 2 samples of every class: drop it with [data] class_subset, or "
                "train without folds")
    raise PlugtrainError(f"cross-validation with {folds} folds: the smallest class of the train split, {name}, has "
                         f"{n}, so {folds - count} of the {folds} folds would validate on none of it: {fix}")


def fold_split(targets: Sequence[Any], fold: int, folds: int, seed: int,
               class_names: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """``(train_positions, val_positions)`` of fold ``fold`` (1-based: 1..folds) of ``targets``, sorted."""
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= max(int(folds), 1):
        raise PlugtrainError(f"fold must be in 1..{folds}, not {fold!r}")
    assign = fold_assignment(targets, folds, seed, class_names)
    val = np.flatnonzero(assign == fold - 1)
    train = np.flatnonzero(assign != fold - 1)
    if len(val) == 0 or len(train) == 0:
        raise PlugtrainError(f"fold {fold} of {folds} is empty")
    return train.tolist(), val.tolist()


__all__ = ["fold_assignment", "fold_split"]
