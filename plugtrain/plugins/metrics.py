"""Metrics: torchmetrics, reduced across ranks by torchmetrics itself.

Classification metrics are updated with logits ``(N, C)`` and class indices, regression metrics with outputs
``(N,)`` or ``(N, 1)`` and targets. The metric-learning metrics (``precision_at_1``, ``recall_at_1``,
``map_at_r``) are updated with the validation embeddings ``(N, D)`` and their integer labels: they keep every
embedding (torchmetrics ``cat`` states, gathered from every rank before ``compute()``) and score leave-one-out
retrieval over the whole validation set with pytorch-metric-learning's ``AccuracyCalculator`` (cosine similarity,
each sample queried against all the others).
"""

from __future__ import annotations

import functools

from plugtrain import Component, hookimpl


def accuracy(num_classes: int, top_k: int = 1):
    """Multiclass accuracy (micro), top-k when ``top_k`` > 1."""
    import torchmetrics

    return torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro")


def top5(num_classes: int):
    """Top-5 multiclass accuracy (top-min(5, classes))."""
    return accuracy(num_classes, top_k=min(5, num_classes))


def f1_macro(num_classes: int):
    """Macro-averaged multiclass F1."""
    import torchmetrics

    return torchmetrics.classification.MulticlassF1Score(num_classes=num_classes, average="macro")


def mae():
    """Mean absolute error."""
    import torchmetrics

    return torchmetrics.MeanAbsoluteError()


def rmse():
    """Root mean squared error."""
    import torchmetrics

    return torchmetrics.MeanSquaredError(squared=False)


def r2():
    """Coefficient of determination R²."""
    import torchmetrics

    return torchmetrics.R2Score()


@functools.cache
def _retrieval_class() -> type:
    import torch
    import torchmetrics
    from torchmetrics.utilities import dim_zero_cat

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

            def cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
                # a list on one process; one tensor once torchmetrics has gathered it from every rank
                if isinstance(state, torch.Tensor):
                    return state
                return dim_zero_cat(state) if len(state) else None

            emb, labels = cat(self.embeddings), cat(self.labels)
            if emb is None or labels is None or len(emb) < 2:
                return torch.tensor(float("nan"))
            calc = AccuracyCalculator(include=(self.key,), k="max_bin_count", device=emb.device,
                                      knn_func=CustomKNN(CosineSimilarity()))
            result = calc.get_accuracy(emb, labels)
            return torch.tensor(float(result[self.key]), device=emb.device)

    return RetrievalMetric


def precision_at_1():
    """Precision@1 of leave-one-out retrieval on the validation embeddings (is the nearest neighbour's class right?)."""
    return _retrieval_class()("precision_at_1")


def recall_at_1():
    """Recall@1 of leave-one-out retrieval on the validation embeddings (metric-learning sense: the share of queries
    whose nearest neighbour has their class; equal to precision@1 at k = 1)."""
    return _retrieval_class()("precision_at_1")


def map_at_r():
    """Mean average precision at R (MAP@R, Musgrave et al. 2020) of leave-one-out retrieval on the validation
    embeddings; R is the number of other samples of the query's class."""
    return _retrieval_class()("mean_average_precision_at_r")


@hookimpl
def plugtrain_metrics():
    return [
        Component("accuracy", accuracy),
        Component("top5", top5),
        Component("f1_macro", f1_macro),
        Component("mae", mae),
        Component("rmse", rmse),
        Component("r2", r2),
        Component("precision_at_1", precision_at_1),
        Component("recall_at_1", recall_at_1),
        Component("map_at_r", map_at_r),
    ]
