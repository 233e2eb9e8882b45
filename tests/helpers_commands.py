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


def train_digits(root: Path, epochs: int, steps: int, batch_size: int, *args: str) -> Path:
    """A tiny real run on sklearn-digits under ``root/runs/digits`` (``args``: more ``train`` options); its folder."""
    from conftest import cli, tiny_spec

    spec = tiny_spec(root, "digits", root / "runs", epochs=epochs, steps=steps, batch_size=batch_size)
    assert cli("train", spec, *args) == 0
    return root / "runs" / "digits"


def validation_batch(run_dir: Path, indices=None) -> tuple:
    """Evaluate's path by hand: ``(model, normalised images, targets, spec)`` of best.pt's model in eval mode and the
    validation samples ``indices`` (all by default) through the run's pipeline and ``ModelInput``."""
    import torch

    from plugtrain.core.runtime import build
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import ModelInput
    from plugtrain.core.spec import load_spec

    spec = load_spec(run_dir / "spec.toml")
    env = DistEnv(device=torch.device("cpu"))
    built = build.build_run(spec, env, purpose="eval")
    built.backbone.load_state_dict(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"])
    model_input = ModelInput.for_spec(spec, built.in_chans, env.device)
    indices = range(len(built.val_data)) if indices is None else indices
    batch = Collate("raise")([built.val_data[(0, i)] for i in indices])
    return built.backbone.eval(), model_input(batch["images"]), batch["targets"], spec, model_input
