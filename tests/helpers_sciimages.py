"""Real scientific-image files for the tests of issue 24, made from real images (Fashion-MNIST, Debian's
``dataset-fashion-mnist``, read with plugtrain's own IDX reader):

* :func:`write_fashion_folders` — the same images as an 8-bit PNG imagefolder, a 16-bit grey TIFF imagefolder (each
  value times 257: the same picture at 16 bits), a 4-channel 16-bit TIFF stack folder (the image, its mirror, its
  transpose and its inverse, one page each) and ``.npy`` copies of the stacks (``CHW``);
* :func:`spec_over` — a tiny real run spec over one of them (timm ``test_resnet`` at 16x16, batch 16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from helpers_faults import write_spec

FASHION = Path("/usr/share/datasets/fashion-mnist")
#: Three classes that are easy to tell apart at 16x16: trouser, bag, ankle boot.
CLASSES = {1: "trouser", 8: "bag", 9: "boot"}


def fashion_images(per_class: int, offset: int = 0) -> list[tuple[np.ndarray, str]]:
    """``per_class`` real Fashion-MNIST training images (28x28 uint8) of each class in :data:`CLASSES`."""
    from plugtrain.plugins.datasets.idx import read_idx

    images = np.asarray(read_idx(str(FASHION / "train-images-idx3-ubyte.gz")))
    labels = np.asarray(read_idx(str(FASHION / "train-labels-idx1-ubyte.gz")))
    out = []
    for label, name in CLASSES.items():
        for i in np.flatnonzero(labels == label)[offset:offset + per_class]:
            out.append((images[i], name))
    return out


def stack4(image8: np.ndarray) -> np.ndarray:
    """A 4-channel 16-bit stack (CxHxW) from one 8-bit image: itself, its mirror, its transpose, its inverse."""
    x = image8.astype(np.uint16) * 257
    return np.stack([x, x[:, ::-1], x.T, 65535 - x])


def write_fashion_folders(root: Path, per_class: int = 40, val_per_class: int = 12) -> dict[str, Path]:
    """Four imagefolders (``train/<class>``, ``val/<class>``) of the same real images: ``png8``, ``tiff16``,
    ``tiff4`` (4 pages each) and ``npy4`` (``CHW`` arrays, float32); returns their roots by name."""
    import tifffile
    from PIL import Image

    roots = {name: root / name for name in ("png8", "tiff16", "tiff4", "npy4")}
    for split, (count, offset) in {"train": (per_class, 0), "val": (val_per_class, per_class)}.items():
        for i, (image, name) in enumerate(fashion_images(count, offset)):
            dirs = {k: r / split / name for k, r in roots.items()}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(dirs["png8"] / f"{i:04d}.png")
            tifffile.imwrite(dirs["tiff16"] / f"{i:04d}.tif", image.astype(np.uint16) * 257)
            stack = stack4(image)
            tifffile.imwrite(dirs["tiff4"] / f"{i:04d}.tif", stack, photometric="minisblack")
            np.save(dirs["npy4"] / f"{i:04d}.npy", stack.astype(np.float32) / 65535)
    return roots


def spec_over(path: Path, output_dir: Path, dataset: dict[str, Any], in_chans: int, epochs: int = 2,
              steps: int = 5, **sections: Any) -> Path:
    """A tiny real run over ``dataset`` (``{"dataset": NAME, PARAM: ...}``, merged into ``[data]``): test_resnet at
    16x16, no augmentation but the resize, batch 16, no workers."""
    base: dict[str, Any] = {
        "run": {"name": path.stem, "epochs": epochs},
        "data": {**dataset, "upscale": None, "image_size": 16, "batch_size": 16, "num_workers": 0},
        "backbone": {"name": "test_resnet", "in_chans": in_chans, "drop_rate": None},
        "optimizer": {"name": "AdamW", "lr": 0.01, "momentum": None},
        "augmentations": {"train": []},
        "loggers": [{"name": "csv"}],
        "trainer": {"max_steps_per_epoch": steps},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return write_spec(path, output_dir, **base)


def write_tiff_stack_folder(root: Path) -> dict[str, int]:
    """:func:`helpers_datafiles.write_image_folder`'s images (3 classes x 16) as 4-page 16-bit TIFF stacks: red,
    green, blue and grey, each x 257 (for the ready ``specs/microscopy-tiff.toml``)."""
    import tifffile
    from helpers_datafiles import write_image_folder
    from PIL import Image

    counts = write_image_folder(root)
    for png in sorted(Path(root).rglob("*.png")):
        with Image.open(png) as img:
            rgb = np.asarray(img.convert("RGB"))
            grey = np.asarray(img.convert("L"))
        stack = np.concatenate([np.moveaxis(rgb, -1, 0), grey[None]]).astype(np.uint16) * 257
        tifffile.imwrite(png.with_suffix(".tif"), stack, photometric="minisblack")
        png.unlink()
    return counts
