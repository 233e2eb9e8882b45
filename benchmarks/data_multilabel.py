"""Multi-label data from real images: mosaics of Fashion-MNIST items, labels = the set of their classes.

Each mosaic is a 2x2 grid of 28-pixel cells (56x56 grey PNG); 2 to 4 of its cells hold a Fashion-MNIST item drawn
at random (the others stay black), and its labels are the distinct classes of those items (an image of two sandals
has one label). Written as PNGs and csv manifests (``path,labels`` with ``;`` between class names) that the ``csv``
dataset reads as a multilabel task::

    python benchmarks/data_multilabel.py data/multilabel            # 2000 train / 500 val mosaics
    plugtrain train specs/multilabel.toml

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; ``--source``
names another folder of the IDX files). Items come from its t10k file by default (10,000 images, quick to read);
train and val mosaics use disjoint items. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
#: Fashion-MNIST's class names in label order, as file-name friendly words (they are the manifests' labels).
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
CELL, GRID = 28, 2


def load_items(source: str = FASHION_MNIST, part: str = "t10k") -> tuple[Any, Any]:
    """``(images (N, 28, 28) uint8, labels (N,) int)`` of one Fashion-MNIST file pair."""
    import numpy as np

    from plugtrain.plugins.datasets.idx import read_idx

    images = np.asarray(read_idx(os.path.join(source, f"{part}-images-idx3-ubyte.gz")))
    labels = np.asarray(read_idx(os.path.join(source, f"{part}-labels-idx1-ubyte.gz"))).astype(np.int64)
    return images, labels


def mosaics(images: Any, labels: Any, count: int, rng: Any, items: tuple[int, int] = (2, 4)) -> list[tuple[Any, list]]:
    """``count`` mosaics ``(image 56x56 uint8, sorted class indices)``, drawing items without replacement."""
    import numpy as np

    order = rng.permutation(len(images))
    used = 0
    out = []
    for _ in range(count):
        k = int(rng.integers(items[0], items[1] + 1))
        cells = rng.choice(GRID * GRID, size=k, replace=False)
        canvas = np.zeros((GRID * CELL, GRID * CELL), dtype=np.uint8)
        classes = set()
        for cell in cells:
            if used >= len(order):
                raise ValueError(f"not enough Fashion-MNIST items for {count} mosaics")
            j = int(order[used])
            used += 1
            r, c = divmod(int(cell), GRID)
            canvas[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = images[j]
            classes.add(int(labels[j]))
        out.append((canvas, sorted(classes)))
    return out


def write(out_dir: str | os.PathLike[str], train: int = 2000, val: int = 500, seed: int = 0,
          source: str = FASHION_MNIST, part: str = "t10k") -> dict[str, Path]:
    """Write ``train`` and ``val`` mosaics under ``out_dir`` (``images/``, ``train.csv``, ``val.csv``); returns the
    manifests' paths by split."""
    import numpy as np
    from PIL import Image

    images, labels = load_items(source, part)
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    made = mosaics(images, labels, train + val, rng)
    manifests = {}
    for split, rows in (("train", made[:train]), ("val", made[train:])):
        path = root / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels"])
            for i, (image, classes) in enumerate(rows):
                name = f"images/{split}-{i:05d}.png"
                Image.fromarray(image).save(root / name)
                w.writerow([name, ";".join(CLASSES[c] for c in classes)])
        manifests[split] = path
    return manifests


def read_labels(manifest: str | os.PathLike[str]) -> Any:
    """The multi-hot ``(N, 10)`` matrix of a manifest this module wrote (class order: :data:`CLASSES`)."""
    import numpy as np

    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hot = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    for i, row in enumerate(rows):
        for name in filter(None, row["labels"].split(";")):
            hot[i, CLASSES.index(name)] = 1.0
    return hot


def trivial_map(manifest: str | os.PathLike[str]) -> float:
    """The mAP of the trivial baseline on a manifest: every image scored alike, so each class's AP is its share of
    positives (the best a model that ignores the image does, in expectation)."""
    hot = read_labels(manifest)
    present = hot.sum(axis=0) > 0
    return float(hot.mean(axis=0)[present].mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write images/, train.csv and val.csv into")
    parser.add_argument("--train", type=int, default=2000, help="train mosaics (default 2000)")
    parser.add_argument("--val", type=int, default=500, help="val mosaics (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=FASHION_MNIST, help=f"folder of the IDX files (default {FASHION_MNIST})")
    parser.add_argument("--part", choices=("t10k", "train"), default="t10k", help="which Fashion-MNIST file")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        print(f"error: {args.source} does not exist: install Debian's dataset-fashion-mnist, or give --source",
              file=sys.stderr)
        return 2
    paths = write(args.out_dir, args.train, args.val, args.seed, args.source, args.part)
    print(f"wrote {args.train} train and {args.val} val mosaics to {args.out_dir}; trivial-baseline val mAP "
          f"{trivial_map(paths['val']):.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
