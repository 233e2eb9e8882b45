"""Per-pixel losses: ``loss(logits (N, C, H, W), masks (N, H, W) int64)`` to a scalar; ``ignore_index`` pixels
count for nothing. Dice, Focal and Lovasz are smp's (``segmentation_models_pytorch.losses``, multiclass mode)."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval

#: The mask value no loss or metric counts (VOC's border value); every component of this package defaults to it.
IGNORE_INDEX = 255


def seg_cross_entropy(ignore_index: int = IGNORE_INDEX, label_smoothing: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
                      class_weights: list[float] | None = None, num_classes: int = 0):
    """Per-pixel cross-entropy (``torch.nn.CrossEntropyLoss``); ``class_weights`` one weight per class."""
    import torch

    from plugtrain.core.errors import PlugtrainError

    weight = None
    if class_weights is not None:
        if num_classes and len(class_weights) != num_classes:
            raise PlugtrainError(f"loss.class_weights has {len(class_weights)} values; the dataset has "
                                 f"{num_classes} classes")
        weight = torch.tensor(class_weights, dtype=torch.float32)
    return torch.nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)


def dice(ignore_index: int = IGNORE_INDEX, smooth: Annotated[float, Ge(0)] = 0.0, log_loss: bool = False,
         from_logits: bool = True):
    """Dice loss (smp ``DiceLoss``, multiclass): 1 - mean Dice over the classes present."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss("multiclass", ignore_index=ignore_index, smooth=smooth, log_loss=log_loss,
                    from_logits=from_logits)


def focal(ignore_index: int = IGNORE_INDEX, gamma: Annotated[float, Ge(0)] = 2.0,
          alpha: Annotated[float, Interval(gt=0, lt=1)] | None = None):
    """Focal loss (smp ``FocalLoss``, multiclass): cross-entropy scaled down on well-classified pixels."""
    from segmentation_models_pytorch.losses import FocalLoss

    return FocalLoss("multiclass", ignore_index=ignore_index, gamma=gamma, alpha=alpha)


def lovasz(ignore_index: int = IGNORE_INDEX, per_image: bool = False):
    """Lovasz-softmax loss (smp ``LovaszLoss``, multiclass): a surrogate of the mean IoU."""
    from segmentation_models_pytorch.losses import LovaszLoss

    return LovaszLoss("multiclass", ignore_index=ignore_index, per_image=per_image)


def dice_ce(ignore_index: int = IGNORE_INDEX, dice_weight: Annotated[float, Gt(0)] = 1.0,
            ce_weight: Annotated[float, Gt(0)] = 1.0):
    """Dice + cross-entropy, weighted (a common default of medical segmentation)."""
    import torch

    ce = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)
    d = dice(ignore_index=ignore_index)

    class DiceCE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ce, self.dice = ce, d

        def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return ce_weight * self.ce(logits, masks) + dice_weight * self.dice(logits, masks)

    return DiceCE()
