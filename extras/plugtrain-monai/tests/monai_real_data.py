"""Volumes and signals derived from REAL images, no download: there is no medical data set offline.

* Volumes: ``size``-voxel cubes stacked from Fashion-MNIST items (Debian's ``dataset-fashion-mnist``) of ONE class,
  each slice an item of that class downsampled to ``size x size`` and shifted at random by up to ``shift`` pixels;
  the label is the class. Written as ``.npy`` (uint8, ``DxHxW``), multi-page TIFF or NIfTI, one folder per class.
* Signals: the rows of scikit-learn's 8x8 digits (real handwritten digits) joined into a 64-sample intensity profile,
  circularly shifted by up to ``shift`` samples; the label is the digit. Written as ``.npy`` (float32, ``L``).

Used by this package's tests, and by hand for ``specs/volumes-3d.toml`` and ``specs/signals-1d.toml``::

    python extras/plugtrain-monai/tests/monai_real_data.py data/monai
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
#: Classes whose shapes differ: a few CPU seconds learn them.
VOLUME_CLASSES = (1, 5, 8)


def available() -> bool:
    """Whether the Debian package's files are here."""
    return (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as an array, through plugtrain's own reader."""
    from plugtrain.plugins.datasets.idx import read_idx

    return np.asarray(read_idx(str(path)))


def _slice(item: np.ndarray, size: int, shift: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 item block-averaged to ``size x size`` (28 a multiple of nothing useful: crop to a multiple first),
    then shifted by up to ``shift`` pixels each way (zeros come in)."""
    k = 28 // size
    crop = item[(28 - k * size) // 2:, (28 - k * size) // 2:][:k * size, :k * size].astype(np.float32)
    small = crop.reshape(size, k, size, k).mean(axis=(1, 3))
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    out = np.zeros_like(small)
    ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else (slice(-dy, size), slice(0, size + dy))
    xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else (slice(-dx, size), slice(0, size + dx))
    out[yd, xd] = small[ys, xs]
    return out.round().astype(np.uint8)


def write(path: Path, volume: np.ndarray) -> None:
    """``volume`` as the file its suffix names: ``.npy``, ``.tif`` (multi-page) or ``.nii.gz``."""
    if path.suffix == ".npy":
        np.save(path, volume)
    elif path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, volume, photometric="minisblack")  # one grey page per slice, whatever the depth
    else:
        import nibabel

        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(path))


def make_volumes(root: str | Path, per_class: int = 20, size: int = 12, shift: int = 2, seed: int = 0,
                 classes: tuple[int, ...] = VOLUME_CLASSES, formats: tuple[str, ...] = (".npy",)) -> Path:
    """``root/train/<class>/*`` and ``root/val/<class>/*``: ``per_class`` training volumes per class (and half as
    many for val) of ``size`` voxels a side; items of train from Fashion-MNIST's training file, of val from its test
    file. ``formats`` cycle over the files (``.npy``, ``.tif``, ``.nii.gz``)."""
    root, rng = Path(root), np.random.default_rng(seed)
    for split, source, n in (("train", "train", per_class), ("val", "t10k", max(2, per_class // 2))):
        images, labels = _idx(FMNIST_DIR / f"{source}-images-idx3-ubyte.gz"), _idx(
            FMNIST_DIR / f"{source}-labels-idx1-ubyte.gz")
        for c in classes:
            folder = root / split / FMNIST_CLASSES[c]
            folder.mkdir(parents=True, exist_ok=True)
            pool = np.flatnonzero(labels == c)
            for i in range(n):
                items = images[rng.choice(pool, size=size, replace=False)]
                volume = np.stack([_slice(item, size, shift, rng) for item in items])
                write(folder / f"{i:03d}{formats[i % len(formats)]}", volume)
    return root


def make_signals(root: str | Path, shift: int = 4, seed: int = 0, val_every: int = 4, limit: int | None = None) -> Path:
    """``root/train.csv`` and ``root/val.csv`` (``path,label``) of 64-sample signals, one per real 8x8 digit of
    scikit-learn (1797, or the first ``limit``): every ``val_every``-th digit is a val sample."""
    from sklearn.datasets import load_digits

    root, rng = Path(root), np.random.default_rng(seed)
    (root / "signals").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows = {"train": [], "val": []}
    for i, (image, label) in enumerate(zip(digits.images[:limit], digits.target[:limit], strict=True)):
        signal = np.roll(image.reshape(-1).astype(np.float32) / 16.0, int(rng.integers(-shift, shift + 1)))
        np.save(root / "signals" / f"{i:04d}.npy", signal)
        rows["val" if i % val_every == 0 else "train"].append(f"signals/{i:04d}.npy,{label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("path,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return root


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/monai")
    make_volumes(out / "volumes")
    make_signals(out / "signals")
    print(f"wrote {out / 'volumes'} and {out / 'signals'}")
