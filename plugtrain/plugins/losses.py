"""Losses: torch.nn criteria for classification, multi-label and regression, pytorch-metric-learning for metric
learning.

Every loss is a ``torch.nn.Module`` called as ``loss(outputs, targets)`` that returns a scalar tensor; outputs are
cast to float32 first (so that bf16/fp16 outputs work outside autocast too).

* Classification (``CrossEntropy``, ``LabelSmoothing``, ``KLDiv``, ``BCEWithLogits``): ``outputs`` are logits
  ``(N, C)``; ``targets`` are class indices ``(N,)`` **or** soft targets ``(N, C)`` (float probabilities, as mixup
  and cutmix produce).
* Multi-label (``BCEWithLogits``, ``ASL``): ``outputs`` are logits ``(N, C)``, one independent sigmoid per class;
  ``targets`` are multi-hot floats ``(N, C)`` (mixed ones too, from mixup/cutmix).
* Regression (``MSE``, ``L1``, ``SmoothL1``, ``Huber``): ``(N, 1)`` outputs are squeezed to meet ``(N,)`` targets.
* Metric learning (``SupCon``, ``TripletMargin``, ``ArcFace``, ``SubCenterArcFace``, ``CosFace``), from
  pytorch-metric-learning: ``outputs`` are embeddings ``(N, D)`` and ``targets`` integer labels ``(N,)``; soft
  targets are refused (no mixup with these losses). With several views of each image, the runtime stacks the views
  along the batch and repeats the labels: positives are found from the labels. ``ArcFace``, ``SubCenterArcFace``
  and ``CosFace`` own their class centres (``loss.parameters()``); they need the ``num_classes`` and
  ``embedding_dim`` (the backbone's output width) context, and the runtime trains their parameters. Under
  ``torch.distributed``, ``SupCon`` and ``TripletMargin`` gather the embeddings of every rank (pytorch-metric-
  learning's all-gather, non-efficient mode) so that pairs span the global batch (``gather_across_ranks``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl

#: A probability / smoothing factor: a number in [0, 1].
Unit = Annotated[float, Interval(ge=0, le=1)]
#: Class weights: non-negative numbers.
Weights = list[Annotated[float, Ge(0)]]
#: A loss's ``weight``: class weights, or "balanced" (from the train split's class counts, resolved by the build).
ClassWeights = Weights | Literal["balanced"]


# -- classification --------------------------------------------------------------------------------------------------
def cross_entropy(label_smoothing: Unit = 0.0, ignore_index: int = -100, weight: ClassWeights | None = None):
    """Cross-entropy on logits (``F.cross_entropy``); class-index or soft (N, C) targets, optional label smoothing."""
    from plugtrain.plugins.loss_modules import CrossEntropy

    return CrossEntropy(label_smoothing, ignore_index, weight)


def label_smoothing(label_smoothing: Unit = 0.1, weight: ClassWeights | None = None):
    """Cross-entropy with label smoothing (default 0.1); class-index or soft (N, C) targets."""
    from plugtrain.plugins.loss_modules import CrossEntropy

    return CrossEntropy(label_smoothing, -100, weight)


def kl_div(label_smoothing: Unit = 0.0, temperature: Annotated[float, Gt(0)] = 1.0):
    """KL divergence between the target distribution (one-hot, smoothed, or soft) and softmax(logits / T)."""
    from plugtrain.plugins.loss_modules import KLDiv

    return KLDiv(label_smoothing, temperature)


def bce_with_logits(pos_weight: Weights | Annotated[float, Ge(0)] | None = None, label_smoothing: Unit = 0.0,
                    num_classes: int = 0):
    """Binary cross-entropy on logits: class indices become one-hot; multi-hot or soft (N, C) targets as given.

    ``pos_weight`` weighs each class's positives (a list, one per class) or every class's alike (a number): above 1
    for rare labels (e.g. negatives / positives of the class)."""
    from plugtrain.plugins.loss_modules import BCEWithLogits

    if isinstance(pos_weight, list) and num_classes and len(pos_weight) != num_classes:
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(f"loss BCEWithLogits: pos_weight lists {len(pos_weight)} weights but the run has "
                             f"{num_classes} classes (give one per class, or one number for all)")
    return BCEWithLogits(pos_weight, label_smoothing)


def asl(gamma_neg: Annotated[float, Ge(0)] = 4.0, gamma_pos: Annotated[float, Ge(0)] = 0.0,
        clip: Annotated[float, Interval(ge=0, lt=1)] = 0.05, eps: Annotated[float, Gt(0)] = 1e-8):
    """Asymmetric loss (ASL, Ridnik et al. 2021) for multi-label classification.

    Focal down-weighting, harder on easy negatives (``gamma_neg`` > ``gamma_pos``), and negatives with p < ``clip``
    dropped (probability shifting). Mean over samples and classes; with ``gamma_neg = gamma_pos = clip = 0`` it is
    ``BCEWithLogits``."""
    from plugtrain.plugins.loss_modules import AsymmetricLoss

    return AsymmetricLoss(gamma_neg, gamma_pos, clip, eps)


# -- regression ------------------------------------------------------------------------------------------------------
def mse():
    """Mean squared error (``torch.nn.MSELoss``) for regression."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.MSELoss())


def l1():
    """Mean absolute error (``torch.nn.L1Loss``) for regression."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.L1Loss())


def smooth_l1(beta: Annotated[float, Ge(0)] = 1.0):
    """Smooth L1 (``torch.nn.SmoothL1Loss``): quadratic below ``beta``, linear above."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.SmoothL1Loss(beta=beta))


def huber(delta: Annotated[float, Gt(0)] = 1.0):
    """Huber loss (``torch.nn.HuberLoss``): quadratic below ``delta``, linear above."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.HuberLoss(delta=delta))


# -- metric learning (pytorch-metric-learning) ------------------------------------------------------------------------
def _needs_classes(name: str, num_classes: int, embedding_dim: int) -> None:
    from plugtrain.core.errors import PlugtrainError

    if not num_classes or num_classes < 2 or not embedding_dim or embedding_dim < 1:
        raise PlugtrainError(
            f"loss {name} needs the number of classes and the embedding width (got num_classes={num_classes}, "
            f"embedding_dim={embedding_dim}); use it with a classification dataset and a backbone that outputs "
            "embeddings (set backbone.embedding_dim)"
        )


def supcon(temperature: Annotated[float, Gt(0)] = 0.1, gather_across_ranks: bool = True):
    """Supervised contrastive loss (pytorch-metric-learning ``SupConLoss``) on embeddings and labels."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    return MetricLearning(losses.SupConLoss(temperature=temperature), None, gather_across_ranks, "SupCon")


def triplet_margin(
    margin: Annotated[float, Ge(0)] = 0.05,
    swap: bool = False,
    smooth_loss: bool = False,
    triplets_per_anchor: Annotated[int, Ge(1)] | Literal["all"] = "all",
    miner: Literal["none", "all", "hard", "semihard", "easy"] = "none",
    miner_margin: Annotated[float, Ge(0)] | None = None,
    gather_across_ranks: bool = True,
):
    """Triplet margin loss (pytorch-metric-learning), optionally on triplets from a ``TripletMarginMiner``.

    ``miner`` picks the triplets (``none``: every triplet in the batch; ``hard``/``semihard``/``easy``/``all``:
    ``TripletMarginMiner(margin=miner_margin or margin, type_of_triplets=miner)``).
    """
    from pytorch_metric_learning import losses, miners

    from plugtrain.plugins.loss_modules import MetricLearning

    loss = losses.TripletMarginLoss(margin=margin, swap=swap, smooth_loss=smooth_loss,
                                    triplets_per_anchor=triplets_per_anchor)
    mine = None
    if miner != "none":
        mine = miners.TripletMarginMiner(margin=margin if miner_margin is None else miner_margin,
                                         type_of_triplets=miner)
    return MetricLearning(loss, mine, gather_across_ranks, "TripletMargin")


def arcface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 28.6,
            scale: Annotated[float, Gt(0)] = 64.0):
    """ArcFace (additive angular margin, pytorch-metric-learning ``ArcFaceLoss``); ``margin`` in degrees.

    Owns the class centres ``W`` (embedding_dim x num_classes), trained with the model (or by ``[loss.optimizer]``).
    """
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("ArcFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale),
        None, False, "ArcFace")


def subcenter_arcface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 28.6,
                      scale: Annotated[float, Gt(0)] = 64.0, sub_centers: Annotated[int, Ge(1)] = 3):
    """Sub-center ArcFace (pytorch-metric-learning ``SubCenterArcFaceLoss``): ``sub_centers`` centres per class."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("SubCenterArcFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale,
                                    sub_centers=sub_centers),
        None, False, "SubCenterArcFace")


def cosface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 0.35,
            scale: Annotated[float, Gt(0)] = 64.0):
    """CosFace (large margin cosine loss, pytorch-metric-learning ``CosFaceLoss``); owns its class centres."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("CosFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale),
        None, False, "CosFace")


#: Loss names whose factories want embeddings and integer labels (metric learning).
METRIC_LEARNING_LOSSES = ("SupCon", "TripletMargin", "ArcFace", "SubCenterArcFace", "CosFace")


#: What each family of losses fits (see ``plugtrain.Component``'s ``fits``): ``plugtrain check`` refuses a loss whose
#: task is not the run's, several views (``data.num_views > 1``) with a loss that ignores them, or a
#: ``[loss.optimizer]`` for a loss without parameters.
_CLASSIFICATION = {"tasks": ("classification",), "consumes": "logits", "views": False, "parameters": False}
_MULTILABEL = {**_CLASSIFICATION, "tasks": ("multilabel",)}
_BINARY = {**_CLASSIFICATION, "tasks": ("classification", "multilabel")}
_REGRESSION = {"tasks": ("regression",), "consumes": "values", "views": False, "parameters": False}
_METRIC_LEARNING = {"tasks": ("metric_learning",), "consumes": "embeddings", "views": True, "parameters": False}
_CENTRES = {**_METRIC_LEARNING, "parameters": True}


@hookimpl
def plugtrain_losses() -> list[Any]:
    return [
        Component("CrossEntropy", cross_entropy, fits=_CLASSIFICATION),
        Component("LabelSmoothing", label_smoothing, fits=_CLASSIFICATION),
        Component("KLDiv", kl_div, fits=_CLASSIFICATION),
        Component("BCEWithLogits", bce_with_logits, fits=_BINARY),
        Component("ASL", asl, fits=_MULTILABEL),
        Component("MSE", mse, fits=_REGRESSION),
        Component("L1", l1, fits=_REGRESSION),
        Component("SmoothL1", smooth_l1, fits=_REGRESSION),
        Component("Huber", huber, fits=_REGRESSION),
        Component("SupCon", supcon, fits=_METRIC_LEARNING),
        Component("TripletMargin", triplet_margin, fits=_METRIC_LEARNING),
        Component("ArcFace", arcface, fits=_CENTRES),
        Component("SubCenterArcFace", subcenter_arcface, fits=_CENTRES),
        Component("CosFace", cosface, fits=_CENTRES),
    ]
