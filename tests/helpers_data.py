"""Helpers for the data-at-scale tests (``tests/data/``): real image folders written here, specs over them, and the
batches of a real loader.

* :func:`write_folder` — an imagefolder of real files: PNGs of several sizes, some grayscale (in an RGB set), some
  JPEGs;
* :func:`folder_spec` — a tiny real run spec (timm ``test_resnet`` at 16x16, 2 DataLoader workers) over any
  ``[data]`` table (``helpers_faults.write_spec`` underneath);
* :func:`epoch_batches` — every batch of epochs ``0..n-1`` of a run's train loader, built by the runtime exactly as
  ``plugtrain train`` builds it (sampler, per-sample seeding, workers, collate).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
from helpers_faults import write_spec

CLASSES = ("ant", "bee", "cat")


def write_folder(root: Path, per_class: int = 16, seed: int = 0, sizes: tuple[int, int] = (12, 26)) -> Path:
    """``root/<class>/NNN.png|jpg``: ``per_class`` real images per class, sizes drawn in ``sizes``; every 5th a
    grayscale PNG, every 7th a JPEG, the rest RGB PNGs; each class has its own mean colour (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(x) for x in rng.integers(sizes[0], sizes[1], 2))
            base = np.zeros((h, w, 3), np.float32)
            base[..., c] = 170
            img = (base + rng.normal(40, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
            if i % 7 == 3:
                Image.fromarray(img).save(root / name / f"{i:03d}.jpg", quality=90)
            elif i % 5 == 1:
                Image.fromarray(img[..., c]).save(root / name / f"{i:03d}.png")
            else:
                Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def folder_spec(path: Path, output_dir: Path, data: dict[str, Any], **sections: Any) -> Path:
    """A tiny real run over ``data`` (merged into ``[data]``): RGB test_resnet at 16x16, batch 8, 2 workers."""
    base = {"upscale": None, "image_size": 16, "batch_size": 8, "num_workers": 2}
    sections["data"] = {**base, **data, **sections.get("data", {})}
    sections["backbone"] = {"name": "test_resnet", "in_chans": 3, "drop_rate": 0.1, **sections.get("backbone", {})}
    return write_spec(path, output_dir, **sections)


def build_for(spec_path: Path) -> Any:
    """The :class:`~plugtrain.core.runtime.build.Built` of a spec, one process on the CPU."""
    import torch

    from plugtrain.core.runtime import build, distributed
    from plugtrain.core.spec import load_spec

    spec = load_spec(spec_path)
    return build.build_run(spec, distributed.DistEnv(device=torch.device("cpu")))


def epoch_batches(built: Any, epochs: range, workers: int = 2, between: Any = None) -> list[list[tuple[Any, Any]]]:
    """``[[(images, targets), ...] per epoch]`` of ``built``'s train loader; ``between(epoch)`` runs after each
    epoch (persistent workers stay, as in training)."""
    import torch

    from plugtrain.core.runtime import build, distributed
    from plugtrain.core.runtime.loader import make_loader

    dist = distributed.DistEnv(device=torch.device("cpu"))
    sampler = build.train_sampler(built, dist)
    loader = make_loader(built.train_data, sampler, workers, "raise", built.spec.run.seed)
    out = []
    for e in epochs:
        sampler.set_epoch(e, 0)
        out.append([(b["images"].clone(), b["targets"].clone()) for b in loader])
        if between is not None:
            between(e)
    del loader
    return out


def shm_files(pattern: str = "*") -> list[str]:
    """The memory-cache files of this user in /dev/shm matching ``pattern``."""
    return sorted(glob.glob(f"/dev/shm/plugtrain-cache-{os.getuid()}/{pattern}"))


def assert_same_batches(a: list[list[tuple[Any, Any]]], b: list[list[tuple[Any, Any]]]) -> int:
    """Bitwise the same batches (images and targets, every epoch); returns how many batches were compared."""
    import torch

    assert len(a) == len(b)
    count = 0
    for e, (ea, eb) in enumerate(zip(a, b, strict=True)):
        assert len(ea) == len(eb), f"epoch {e}: {len(ea)} vs {len(eb)} batches"
        for k, ((xa, ya), (xb, yb)) in enumerate(zip(ea, eb, strict=True)):
            assert xa.dtype == xb.dtype and xa.shape == xb.shape, (e, k, xa.shape, xb.shape)
            assert torch.equal(xa, xb), f"epoch {e} batch {k}: images differ"
            assert torch.equal(ya, yb), f"epoch {e} batch {k}: targets differ"
            count += 1
    return count
