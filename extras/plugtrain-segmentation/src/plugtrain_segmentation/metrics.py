"""Per-pixel metrics (torchmetrics, over every validation pixel of every rank): updated with logits
``(N, C, H, W)`` and masks ``(N, H, W)``; ``ignore_index`` pixels are left out. A per-class metric is logged as
``val/<name>/<class index>``."""

from __future__ import annotations

from .losses import IGNORE_INDEX


def _check(num_classes: int, name: str) -> None:
    from plugtrain.core.errors import PlugtrainError

    if num_classes < 1:
        raise PlugtrainError(f"metric {name!r} needs the dataset's class names (background included)")


def miou(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Mean intersection over union over the classes (torchmetrics ``MulticlassJaccardIndex``, macro)."""
    from torchmetrics.classification import MulticlassJaccardIndex

    _check(num_classes, "miou")
    return MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)


def iou_per_class(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Intersection over union of each class (``val/iou_per_class/<i>``)."""
    from torchmetrics.classification import MulticlassJaccardIndex

    _check(num_classes, "iou_per_class")
    return MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index)


def mdice(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Mean Dice over the classes (the F1 score of each class's pixels, ``MulticlassF1Score``, macro)."""
    from torchmetrics.classification import MulticlassF1Score

    _check(num_classes, "mdice")
    return MulticlassF1Score(num_classes, average="macro", ignore_index=ignore_index)


def dice_per_class(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """Dice of each class (``val/dice_per_class/<i>``)."""
    from torchmetrics.classification import MulticlassF1Score

    _check(num_classes, "dice_per_class")
    return MulticlassF1Score(num_classes, average="none", ignore_index=ignore_index)


def pixel_accuracy(num_classes: int = 0, ignore_index: int = IGNORE_INDEX):
    """The fraction of pixels whose class is right (micro accuracy)."""
    from torchmetrics.classification import MulticlassAccuracy

    _check(num_classes, "pixel_accuracy")
    return MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
