"""Segmentation data derived from REAL Fashion-MNIST images (Debian's ``dataset-fashion-mnist``), no download.

Each sample is a ``size x size`` grey canvas holding ``items`` Fashion-MNIST items (28x28) in distinct cells of a
2x2 grid; its mask is the Otsu foreground of each item with the value ``1 + position of the item's class in
classes`` (0 = background), written as a palette PNG (the mask format of VOC and most annotation tools). The items
of the training samples come from Fashion-MNIST's training file, those of the validation samples from its test file,
so no item is in both.

Used by this package's tests, and by hand for ``specs/segmentation.toml``::

    python extras/plugtrain-segmentation/tests/seg_fmnist_data.py data/fmnist-seg
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
#: Four classes whose shapes differ (a default that a few CPU seconds learn).
DEFAULT_CLASSES = (1, 5, 8, 9)


def available() -> bool:
    """Whether the Debian package's files are here."""
    return (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as an array, through plugtrain's own reader."""
    from plugtrain.plugins.datasets.idx import read_idx

    return np.asarray(read_idx(str(path)))


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``train`` or ``t10k`` images (N, 28, 28) and labels (N,)."""
    return (_idx(FMNIST_DIR / f"{split}-images-idx3-ubyte.gz"), _idx(FMNIST_DIR / f"{split}-labels-idx1-ubyte.gz"))


def otsu(image: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the level that maximises the between-class variance."""
    hist = np.bincount(image.reshape(-1), minlength=256).astype(np.float64)
    total = hist.sum()
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * np.arange(256))
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between))


def palette(num_classes: int) -> list[int]:
    """A PIL palette: 0 black, then distinct colours (what a viewer shows; the pixel values are the classes)."""
    rng = np.random.default_rng(7)
    colours = [(0, 0, 0)] + [tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(num_classes - 1)]
    return [v for c in colours for v in c] + [255, 255, 255] * (256 - len(colours))


def compose(items: np.ndarray, labels: np.ndarray, classes: tuple[int, ...], n: int, rng: np.random.Generator,
            size: int = 56, per_image: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canvases (n, size, size) uint8 and their masks (n, size, size) uint8."""
    keep = np.flatnonzero(np.isin(labels, classes))
    value = {c: i + 1 for i, c in enumerate(classes)}
    cell = size // 2
    off = (cell - 28) // 2
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        cells = rng.choice(4, size=per_image, replace=False)
        for item, c in zip(rng.choice(keep, size=per_image, replace=False), cells, strict=True):
            y, x = (c // 2) * cell + off, (c % 2) * cell + off
            pixels = items[item]
            images[k, y:y + 28, x:x + 28] = pixels
            masks[k, y:y + 28, x:x + 28] = np.where(pixels > otsu(pixels), value[int(labels[item])], 0)
    return images, masks


def write(root: str | Path, n_train: int = 96, n_val: int = 32, classes: tuple[int, ...] = DEFAULT_CLASSES,
          size: int = 56, seed: int = 0, csv: bool = False) -> list[str]:
    """Write ``root/{train,val}/{images,masks}/NNNN.png`` (and, with ``csv``, ``root/{train,val}.csv`` of
    ``image,mask`` paths); returns the class names (``background`` first)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ["background"] + [FMNIST_CLASSES[c] for c in classes]
    pal = palette(len(names))
    for split, source, n in (("train", "train", n_train), ("val", "t10k", n_val)):
        items, labels = load(source)
        images, masks = compose(items, labels, classes, n, rng, size)
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        rows = ["image,mask"]
        for k in range(n):
            Image.fromarray(images[k], mode="L").save(root / split / "images" / f"{k:04d}.png")
            m = Image.fromarray(masks[k], mode="P")
            m.putpalette(pal)
            m.save(root / split / "masks" / f"{k:04d}.png")
            rows.append(f"{split}/images/{k:04d}.png,{split}/masks/{k:04d}.png")
        if csv:
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return names


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "data/fmnist-seg"
    print("classes:", write(out, n_train=1000, n_val=200, csv=True))
