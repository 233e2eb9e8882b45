"""Helpers of the command tests: scikit-learn's 8x8 digits written as PNG files, as a user would have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digit_indices(validation: bool, seed: int = 0) -> np.ndarray:
    """The digits' indices: all of them, or the validation split of a run of ``seed`` (sklearn-digits' own split)."""
    from sklearn.datasets import load_digits

    from plugtrain.plugins.datasets.splits import split_indices

    targets = load_digits().target.astype(np.int64)
    return split_indices(targets, 0.2, seed)[1] if validation else np.arange(len(targets))


def write_digit_pngs(folder: Path, count: int, *, validation: bool = False, seed: int = 0) -> tuple[list[Path],
                                                                                                      list[int]]:
    """The 8x8 originals (0..16 scaled to 0..255, as the dataset scales them) of the first ``count`` digits (or of
    the first validation samples) as grey PNG files; returns the paths and the digits' labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths, labels = [], []
    for n, i in enumerate(digit_indices(validation, seed)[:count]):
        path = Path(folder) / f"digit{n}.png"
        Image.fromarray((digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8), "L").save(path)
        paths.append(path)
        labels.append(int(digits.target[i]))
    return paths, labels


REPO_QUICKSTART = Path(__file__).resolve().parents[1] / "specs" / "quickstart.toml"
