"""The torchmetrics classes behind the built-in retrieval and visual metrics (``plugtrain/plugins/metrics.py``).

``RetrievalMetric`` scores leave-one-out retrieval of embeddings; ``ConfusionMatrix``, ``ParityPlot`` and
``Embeddings`` add no scalar and hand the runtime an image or the embeddings after ``compute()``. They live here, not
in the plugin module, because this module imports torch and torchmetrics at the top: the plugin imports it only
inside its factories (listing metrics stays cheap), while the classes stay importable and subclassable
(``from plugtrain.plugins.metric_classes import ConfusionMatrix``). Their state names are torchmetrics states:
keep them.
"""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from plugtrain.plugins.metrics import render_confusion_matrix, render_parity_plot

__all__ = ["ConfusionMatrix", "Embeddings", "MultilabelAP", "MultilabelF1", "ParityPlot", "RetrievalMetric"]


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
    """A ``cat`` state as one tensor (``None`` when empty)."""
    # a list on one process; one tensor once torchmetrics has gathered it from every rank
    if isinstance(state, torch.Tensor):
        return state
    return dim_zero_cat(state) if len(state) else None


def _class_indices(target: torch.Tensor) -> torch.Tensor:
    """Class indices ``(N,)`` from indices or from soft ``(N, C)`` targets (their argmax)."""
    if target.is_floating_point() and target.ndim == 2:
        target = target.argmax(dim=1)
    return target.long().reshape(-1)


def multi_hot(target: torch.Tensor) -> torch.Tensor:
    """Integer multi-hot targets from float ones (mixed or smoothed targets: a label is on above 0.5)."""
    return (target > 0.5).int() if target.is_floating_point() else target.int()


class MultilabelF1(torchmetrics.classification.MultilabelF1Score):
    """torchmetrics' multilabel F1 on logits: a sigmoid each (so the inputs are never mistaken for probabilities)."""

    def __init__(self, num_classes: int, average: str, threshold: float = 0.5) -> None:
        super().__init__(num_labels=num_classes, average=average, threshold=threshold)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(torch.sigmoid(preds.detach().float()), multi_hot(target))


class MultilabelAP(torchmetrics.classification.MultilabelAveragePrecision):
    """torchmetrics' multilabel average precision on logits, per class; ``per_class=False`` averages the classes that
    have positives (a class absent from the validation set has no AP, rather than an AP of 0)."""

    def __init__(self, num_classes: int, per_class: bool = False) -> None:
        super().__init__(num_labels=num_classes, average=None)
        self.per_class = per_class

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(torch.sigmoid(preds.detach().float()), multi_hot(target))

    def compute(self) -> torch.Tensor:
        import warnings

        target = _cat(self.target)
        if target is None or not len(target):
            return torch.tensor(float("nan"))
        with warnings.catch_warnings():  # a class without positives: handled below, not worth a warning each epoch
            warnings.simplefilter("ignore", UserWarning)
            ap = super().compute()
        present = (target == 1).any(dim=0)
        if self.per_class:
            return torch.where(present, ap, torch.full_like(ap, float("nan")))
        return ap[present].mean() if bool(present.any()) else torch.tensor(float("nan"))


class RetrievalMetric(torchmetrics.Metric):
    """Leave-one-out retrieval accuracy of embeddings (pytorch-metric-learning ``AccuracyCalculator``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, key: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim != 2:
            raise ValueError(f"{self.key} needs embeddings (N, D), got shape {tuple(preds.shape)}")
        if target.is_floating_point() and target.ndim == 2:
            target = target.argmax(dim=1)
        self.embeddings.append(preds.detach().float())
        self.labels.append(target.detach().long().reshape(-1))

    def compute(self) -> torch.Tensor:
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        emb, labels = _cat(self.embeddings), _cat(self.labels)
        if emb is None or labels is None or len(emb) < 2:
            return torch.tensor(float("nan"))
        calc = AccuracyCalculator(include=(self.key,), k="max_bin_count", device=emb.device,
                                  knn_func=CustomKNN(CosineSimilarity()))
        result = calc.get_accuracy(emb, labels)
        return torch.tensor(float(result[self.key]), device=emb.device)


class ConfusionMatrix(torchmetrics.classification.MulticlassConfusionMatrix):
    """torchmetrics' multiclass confusion matrix, drawn as an image; no scalar."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__(num_classes=num_classes)
        self.class_names = list(class_names) if class_names else None
        self._image = None
        self.matrix = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, _class_indices(target))

    def compute(self) -> dict[str, Any]:
        self.matrix = super().compute().detach().cpu()
        self._image = render_confusion_matrix(self.matrix.numpy(), self.class_names)
        return {}

    def image(self) -> Any:
        return self._image


class ParityPlot(torchmetrics.Metric):
    """Every validation prediction against its target, drawn as a parity plot; no scalar."""

    is_differentiable = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self._image = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = preds.detach().float()
        target = target.detach().float()
        if preds.numel() != target.numel():
            raise ValueError(f"parity_plot needs one prediction per target, got {tuple(preds.shape)} predictions "
                             f"for {tuple(target.shape)} targets")
        self.preds.append(preds.reshape(-1))
        self.target.append(target.reshape(-1))

    def compute(self) -> dict[str, Any]:
        preds, target = _cat(self.preds), _cat(self.target)
        if preds is None or target is None:
            preds = target = torch.zeros(0)
        self._image = render_parity_plot(target.cpu().numpy(), preds.cpu().numpy())
        return {}

    def image(self) -> Any:
        return self._image


class Embeddings(torchmetrics.Metric):
    """The validation embeddings and labels, for TensorBoard's projector; no scalar."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, max_points: int) -> None:
        super().__init__()
        self.max_points = max_points
        self.add_state("vectors", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self._last = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim != 2:
            raise ValueError(f"embeddings needs embeddings (N, D), got shape {tuple(preds.shape)}")
        self.vectors.append(preds.detach().float())
        self.labels.append(_class_indices(target.detach()))

    def compute(self) -> dict[str, Any]:
        vectors, labels = _cat(self.vectors), _cat(self.labels)
        if vectors is None or labels is None or not len(vectors):
            self._last = None
        else:
            n = min(len(vectors), self.max_points)
            self._last = (vectors[:n].cpu(), [int(v) for v in labels[:n].tolist()])
        return {}

    def embeddings(self) -> tuple[Any, list[int]] | None:
        return self._last
