"""Small image data sets written to disk for the ready specs: an image folder and a regression csv manifest.

The images are real PNG files (Pillow), tiny and seeded, with a signal a model can pick up: each class of the folder
has its own colour, and each regression image's brightness is its target.
"""

from __future__ import annotations

from pathlib import Path

CLASSES = ("circle", "square", "triangle")


def _png(path: Path, rgb: tuple[float, float, float], rng, size: int) -> None:
    import numpy as np
    from PIL import Image

    base = np.array(rgb, dtype=np.float32)[None, None, :] * 255.0
    noise = rng.normal(0.0, 20.0, size=(size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


def write_image_folder(root: Path, per_class: int = 16, size: int = 24, seed: int = 0) -> dict[str, int]:
    """``root/<class>/<i>.png`` for each of :data:`CLASSES`; returns ``{class: count}``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = {"circle": (0.8, 0.2, 0.2), "square": (0.2, 0.8, 0.2), "triangle": (0.2, 0.2, 0.8)}
    for cls in CLASSES:
        for i in range(per_class):
            _png(Path(root) / cls / f"{i:03d}.png", colours[cls], rng, size)
    return {cls: per_class for cls in CLASSES}


def write_regression_csv(csv_path: Path, rows: int = 40, size: int = 24, seed: int = 0) -> list[float]:
    """A manifest ``path,target`` at ``csv_path`` and its images under ``img/`` beside it (paths relative to the
    manifest's folder); the target is the image's grey level in [0, 1]. Returns the targets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(csv_path).parent
    targets = []
    lines = ["path,target"]
    for i in range(rows):
        level = float(rng.uniform(0.0, 1.0))
        _png(folder / "img" / f"{i:03d}.png", (level, level, level), rng, size)
        targets.append(round(level, 4))
        lines.append(f"img/{i:03d}.png,{targets[-1]}")
    Path(csv_path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return targets
