"""The plugtrain plugin of this package: the task ``segmentation`` and the components that fit it.

plugtrain finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.plugtrain]
    segmentation = "plugtrain_segmentation.plugin"

Importing it is cheap: segmentation_models_pytorch, torch and torchmetrics are imported by the hooks and factories,
when a component of their kind is listed or built.
"""

from __future__ import annotations

from plugtrain import Component, hookimpl

from . import dataset, losses, metrics, task

#: What every loss and metric here declares: the segmentation task, whose model outputs per-pixel logits.
FITS = {"tasks": ("segmentation",), "consumes": task.OUTPUTS}


@hookimpl
def plugtrain_tasks():
    return [Component("segmentation", task.segmentation_task,
                      summary="Semantic segmentation: a class per pixel (image + mask pairs, smp models, IoU).")]


@hookimpl
def plugtrain_backbones():
    from .models import factories

    return [Component(name, factory, summary=f"segmentation_models_pytorch {name[4:]}: images to per-pixel logits "
                                             f"(any smp encoder, timm's as tu-NAME)", fits=FITS)
            for name, factory in factories().items()]


@hookimpl
def plugtrain_losses():
    return [
        Component("SegCrossEntropy", losses.seg_cross_entropy,
                  summary="Per-pixel cross-entropy with ignore_index (and optional class weights).", fits=FITS),
        Component("Dice", losses.dice, summary="Dice loss (smp DiceLoss, multiclass) with ignore_index.", fits=FITS),
        Component("Focal", losses.focal, summary="Focal loss (smp FocalLoss, multiclass) with ignore_index.",
                  fits=FITS),
        Component("Lovasz", losses.lovasz, summary="Lovasz-softmax loss (smp LovaszLoss): a mean-IoU surrogate.",
                  fits=FITS),
        Component("DiceCE", losses.dice_ce, summary="Dice + per-pixel cross-entropy, weighted.", fits=FITS),
    ]


@hookimpl
def plugtrain_metrics():
    return [
        Component("miou", metrics.miou, summary="Mean IoU over the classes (torchmetrics MulticlassJaccardIndex).",
                  fits=FITS),
        Component("iou_per_class", metrics.iou_per_class, summary="IoU of each class (val/iou_per_class/<i>).",
                  fits=FITS),
        Component("mdice", metrics.mdice, summary="Mean Dice over the classes (per-pixel F1, macro).", fits=FITS),
        Component("dice_per_class", metrics.dice_per_class, summary="Dice of each class (val/dice_per_class/<i>).",
                  fits=FITS),
        Component("pixel_accuracy", metrics.pixel_accuracy, summary="The fraction of pixels classified right.",
                  fits=FITS),
    ]


@hookimpl
def plugtrain_datasets():
    return [Component("segmentation-pairs", dataset.segmentation_pairs,
                      summary="Images and masks of class indices: two parallel folders, or a CSV of image,mask.",
                      fits={"tasks": ("segmentation",)})]
