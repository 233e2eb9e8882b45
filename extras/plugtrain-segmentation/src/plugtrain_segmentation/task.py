"""The task ``segmentation``: a class per pixel. The contract is :class:`plugtrain.core.hookspecs.Task`.

The target of a sample is its mask, ``HxW`` class indices (``ignore_index`` for pixels no loss or metric counts);
a batch's masks collate to an ``(N, H, W)`` int64 tensor. Every augmentation is called with ``mask=``: geometric
transforms move the mask with the image (nearest-neighbour, so class indices stay class indices), image-only ones
(colour, blur, noise) leave it as it is; a transform that can do neither is refused before training. The model (an
``smp-*`` backbone) is complete, no head is added: it outputs ``(N, C, H, W)`` logits.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .losses import IGNORE_INDEX

#: What the model outputs; the losses and metrics of this package consume it (``Fits.consumes``).
OUTPUTS = "mask_logits"
#: The member that holds a sample's mask in the shards ``plugtrain shards`` writes (``<key>.mask.png``, beside the
#: image member); ``segmentation-pairs`` reads it back (``shards = DIR``).
MASK_MEMBER = "mask.png"


def mask_problem(transform: Any) -> str | None:
    """Why ``transform`` (an albumentations pipeline or transform) cannot carry a mask, or ``None``.

    A leaf transform carries a mask when it declares a ``mask`` target (geometric transforms move it) or is
    image-only (colour transforms leave it alone); anything else would move the image and not its mask, or fail."""
    import albumentations as A

    children = getattr(transform, "transforms", None)
    if children is not None and not isinstance(transform, A.BasicTransform):
        for child in children:
            problem = mask_problem(child)
            if problem:
                return problem
        return None
    if isinstance(transform, A.ImageOnlyTransform):
        return None
    targets = getattr(transform, "targets", None)
    if isinstance(targets, dict) and "mask" in targets:
        return None
    return (f"the augmentation {type(transform).__name__} cannot carry a segmentation mask (it is neither image-only "
            f"nor moves a mask= with its image); remove it from the pipeline or use one with a mask target")


class SegmentationTask:
    """Semantic segmentation: a class per pixel, from image + mask pairs, with an ``smp-*`` model.

    ``ignore_index``: the mask value that marks pixels without a class (kept by ``data.class_subset``; give the
    losses and metrics the same value, 255 by default everywhere)."""

    outputs = OUTPUTS
    dataset_tasks = ("segmentation",)
    primary = ("val/miou", "max")
    default_loss = "SegCrossEntropy"
    default_metrics = ("miou", "iou_per_class", "mdice")
    required_metrics = ("miou",)
    batch_mix = False

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self._checked: set[int] = set()

    def num_classes(self, class_names: list[str]) -> int:
        if len(class_names) < 2:
            raise ValueError(f"has {len(class_names)} class(es); segmentation needs >= 2 (background first)")
        return len(class_names)

    def backbone_classes(self, num_classes: int) -> int:
        return num_classes

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        if len(shape) != 4 or shape[1] != num_classes:
            return (f"{tuple(shape)} for a batch of 2 images; segmentation needs (N, {num_classes}, H, W) per-pixel "
                    f"logits: use a segmentation model (an smp-* backbone, `plugtrain list backbones smp`)")
        return None

    def augment(self, transform: Any, image: Any, target: Any) -> tuple[Any, Any]:
        if id(transform) not in self._checked:
            problem = mask_problem(transform)
            if problem:
                from plugtrain.core.errors import PlugtrainError

                raise PlugtrainError(problem)
            self._checked.add(id(transform))
        out = transform(image=image, mask=target)
        return out["image"], out["mask"]

    def collate(self, targets: list[Any]) -> Any:
        import numpy as np
        import torch

        masks = [t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t)) for t in targets]
        return torch.stack([m.to(torch.int64) for m in masks])

    def placeholder_target(self, input_shape: tuple[int, ...]) -> Any:
        import numpy as np

        return np.zeros(tuple(input_shape[-2:]), dtype=np.uint8)

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        return f"{num_classes} classes per pixel"

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        """The mask (``argmax`` over the classes) and the share of the image each class covers."""
        mask = output.argmax(dim=0).to("cpu").numpy().astype("uint8" if output.shape[0] <= 256 else "int64")
        counts = [int((mask == i).sum()) for i in range(output.shape[0])]
        total = max(mask.size, 1)
        names = class_names or [str(i) for i in range(output.shape[0])]
        present = {names[i]: round(c / total, 4) for i, c in enumerate(counts) if c}
        return {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "classes": present,
                "mask": mask.tolist()}

    def predict_text(self, result: dict[str, Any]) -> str:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in sorted(result["classes"].items(), key=lambda kv: -kv[1]))
        where = f"{result['mask_file']}  " if "mask_file" in result else ""
        return f"{where}{result['width']}x{result['height']} mask: {shares}"

    def save_prediction(self, result: dict[str, Any], image: str, out_dir: Any) -> dict[str, Any]:
        """Write the mask as a palette PNG (pixel values are class indices) named after the image, at the image's
        own size when ``image`` is a file (nearest neighbour: class indices stay class indices)."""
        import numpy as np
        from PIL import Image

        from plugtrain.core.atomic import write_atomic

        out_dir = Path(out_dir)
        mask = np.asarray(result["mask"], dtype=np.uint8 if np.max(result["mask"], initial=0) < 256 else np.int64)
        try:
            with Image.open(str(image)) as im:
                size = im.size
        except (OSError, ValueError):
            size = None
        if size is not None and size != (mask.shape[1], mask.shape[0]):
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        path = out_dir / f"{Path(str(image)).stem}.mask.png"
        write_atomic(path, _png(mask))
        rest = {k: v for k, v in result.items() if k != "mask"}
        return {**rest, "mask_file": str(path)}

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        return {"name": "mask_logits", "shape": ["batch", num_classes, "height", "width"],
                "meaning": "per-pixel logits: argmax over dimension 1 is each pixel's class (softmax over it for "
                           "probabilities)"}

    def shard_target(self, target: Any) -> tuple[str, bytes]:
        import numpy as np

        return MASK_MEMBER, _png(np.asarray(target))

    def fold_targets(self, targets: Any) -> Any:
        return None

    def relabel(self, target: Any, label_map: dict[int, int]) -> Any:
        import numpy as np

        target = np.asarray(target)
        lut = np.full(max(int(target.max(initial=0)), max(label_map), self.ignore_index) + 1, self.ignore_index,
                      dtype=np.int64)
        for old, new in label_map.items():
            lut[old] = new
        return lut[target].astype(target.dtype if lut.max() < 256 else np.int64)

    def report(self, metrics: dict[str, float], class_names: list[str]) -> dict[str, Any]:
        """``per_class``: each class's IoU (and Dice, when measured) by name."""
        per: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parts = key.rsplit("/", 2)
            if len(parts) == 3 and parts[1] in ("iou_per_class", "dice_per_class") and parts[2].isdigit():
                i = int(parts[2])
                name = class_names[i] if i < len(class_names) else str(i)
                per.setdefault(name, {})[parts[1].split("_", 1)[0]] = value
        return {"per_class": per} if per else {}


def _png(mask: Any) -> bytes:
    """A mask as PNG bytes: palette for values < 256 (grey viewers show the classes in colour), 16-bit otherwise."""
    import numpy as np
    from PIL import Image

    mask = np.asarray(mask)
    buf = io.BytesIO()
    if mask.max(initial=0) < 256:
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        rng = np.random.default_rng(7)
        colours = [0, 0, 0] + [int(v) for v in rng.integers(40, 256, 3 * 254)] + [255, 255, 255]
        im.putpalette(colours)
    else:
        im = Image.fromarray(mask.astype(np.uint16))
    im.save(buf, format="PNG")
    return buf.getvalue()


def segmentation_task(ignore_index: int = IGNORE_INDEX) -> SegmentationTask:
    """Semantic segmentation (a class per pixel): image + mask pairs, smp models, IoU/Dice metrics."""
    return SegmentationTask(ignore_index=ignore_index)
