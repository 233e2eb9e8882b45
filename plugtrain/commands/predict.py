"""``plugtrain predict RUN_DIR IMAGE... [--checkpoint best|last|PATH] [--top-k K] [--json]``.

Top-k classes with probabilities (or the predicted values of a regression run) for image files, from a finished
run's checkpoint, with the run's validation transform; one process, one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plugtrain.commands._finished_run import checkpoint_path, local_env, open_run
from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import build
from plugtrain.core.runtime import checkpoint as ckpt


def _decode(path: str, in_chans: int) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(in_chans)
    if mode is None:
        raise PlugtrainError(f"predict decodes 1-, 3- or 4-channel images; this run's model takes {in_chans}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise PlugtrainError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise PlugtrainError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PlugtrainError(f"{path}: cannot decode the image: {exc}") from None


def run(run_dir: str, images: Sequence[str], *, checkpoint: str = "best", top_k: int = 5,
        as_json: bool = False) -> int:
    """Predict ``images`` with ``checkpoint`` of ``run_dir``; print a line (or JSON) per image; exit code 0."""
    import torch

    from plugtrain.core.runtime.loader import AugmentedDataset, Collate
    from plugtrain.core.runtime.step import ModelInput

    if top_k < 1:
        raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
    root, spec = open_run(run_dir)
    path = checkpoint_path(root, checkpoint)
    state = ckpt.load(path)
    meta = state.get("meta") or {}
    task = meta.get("task", spec.run.task)
    if task == "metric_learning":
        raise PlugtrainError("predict gives class probabilities; a metric-learning run has none (use evaluate)")
    in_chans = int(meta.get("in_chans", 3))
    class_names = list(meta.get("class_names") or [])
    num_classes = int(meta.get("num_classes", len(class_names)))
    decoded = [(_decode(p, in_chans), 0) for p in images]
    env = local_env(spec)
    torch.manual_seed(spec.run.seed)
    model = build.component("backbones", spec.backbone, "backbone", num_classes=num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise PlugtrainError(f"{path}: does not fit the model of {root / 'spec.toml'}: {first_line(exc)}") from None
    model.to(env.device).eval()
    transform = build.build_transform(spec, "val", in_chans)
    data = AugmentedDataset(decoded, transform, spec.run.seed, "predict", to_tensor=spec.augmentations.normalize)
    batch = Collate("raise")([data[(0, i)] for i in range(len(data))])
    model_input = ModelInput.for_spec(spec, in_chans, env.device)
    with torch.no_grad():
        outputs = model(model_input(batch["images"])).float().cpu()
    results = []
    for img_path, out in zip(images, outputs, strict=True):
        if task == "regression":
            values = out.tolist()
            results.append({"image": img_path, "prediction": values[0] if len(values) == 1 else values})
            continue
        probs = out.softmax(-1)
        k = min(top_k, probs.numel())
        p, idx = probs.topk(k)
        results.append({"image": img_path, "top_k": [
            {"class": class_names[i] if i < len(class_names) else str(i), "index": int(i), "probability": float(q)}
            for q, i in zip(p.tolist(), idx.tolist(), strict=True)]})
    if as_json:
        console.print_json(results)
        return 0
    for r in results:
        if "prediction" in r:
            console.echo(f"{r['image']}\t{r['prediction']}")
        else:
            console.echo(r["image"] + "\t" + "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"]))
    return 0
