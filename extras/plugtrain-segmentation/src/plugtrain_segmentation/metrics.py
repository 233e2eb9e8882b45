"""Per-pixel metrics (torchmetrics, over every validation pixel of every rank): updated with logits
``(N, C, H, W)`` and masks ``(N, H, W)``; ``ignore_index`` pixels are left out. A per-class metric is logged as
``val/<name>/<class index>``."""

from __future__ import annotations

from .losses import IGNORE_INDEX


def _multiclass(name: str, kind: str, num_classes: int, average: str, ignore_index: int):
    """torchmetrics' ``Multiclass<kind>`` (``JaccardIndex``, ``F1Score``, ``Accuracy``) for metric ``name``."""
    import torchmetrics.classification

    from plugtrain.core.errors import PlugtrainError

    if num_classes < 1:
        raise PlugtrainError(f"metric {name!r} needs the dataset's class names (background included)")
    metric = getattr(torchmetrics.classification, f"Multiclass{kind}")
    return metric(num_classes, average=average, ignore_index=ignore_index)


def miou(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Mean intersection over union over the classes (torchmetrics ``MulticlassJaccardIndex``, macro)."""
    return _multiclass("miou", "JaccardIndex", num_classes, "macro", ignore_index)


def iou_per_class(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Intersection over union of each class (``val/iou_per_class/<i>``)."""
    return _multiclass("iou_per_class", "JaccardIndex", num_classes, "none", ignore_index)


def mdice(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Mean Dice over the classes (the F1 score of each class's pixels, ``MulticlassF1Score``, macro)."""
    return _multiclass("mdice", "F1Score", num_classes, "macro", ignore_index)


def dice_per_class(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Dice of each class (``val/dice_per_class/<i>``)."""
    return _multiclass("dice_per_class", "F1Score", num_classes, "none", ignore_index)


def pixel_accuracy(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """The fraction of pixels whose class is right (micro accuracy)."""
    return _multiclass("pixel_accuracy", "Accuracy", num_classes, "micro", ignore_index)
