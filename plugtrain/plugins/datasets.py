"""Datasets that ship with installed packages or read common on-disk layouts."""

from __future__ import annotations

from plugtrain import Component, hookimpl


def sklearn_digits(val_fraction: float = 0.2, upscale: int = 4):
    """scikit-learn's handwritten digits: 1,797 real 8x8 grayscale images of 10 classes, shipped in the wheel.

    Images are scaled from 0..16 to 0..255 and upscaled ``upscale`` times (nearest) so that CNNs have room to work.
    The split is stratified with the run's seed.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from plugtrain.core.data import DatasetSplits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    images = images[..., None]  # HxWx1
    targets = digits.target.astype(np.int64)
    idx = np.arange(len(targets))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=0, stratify=targets)
    train = [(images[i], int(targets[i])) for i in tr]
    val = [(images[i], int(targets[i])) for i in va]
    return DatasetSplits(train=train, val=val, class_names=[str(d) for d in range(10)], in_chans=1)


@hookimpl
def plugtrain_datasets():
    return [Component("sklearn-digits", sklearn_digits)]
