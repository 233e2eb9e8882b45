"""Metrics: torchmetrics, reduced across ranks by torchmetrics itself."""

from __future__ import annotations

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


@hookimpl
def plugtrain_metrics():
    return [
        Component("accuracy", accuracy),
        Component("top5", top5),
        Component("f1_macro", f1_macro),
        Component("mae", mae),
        Component("rmse", rmse),
        Component("r2", r2),
    ]
