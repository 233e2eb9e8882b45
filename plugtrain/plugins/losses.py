"""Losses: the torch.nn criteria a classification or regression run needs."""

from __future__ import annotations

from typing import Literal

from plugtrain import Component, hookimpl


def cross_entropy(label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean",
                  ignore_index: int = -100):
    """Cross-entropy on logits and class indices (``torch.nn.CrossEntropyLoss``), with optional label smoothing."""
    import torch

    return torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction, ignore_index=ignore_index)


def mse(reduction: Literal["mean", "sum", "none"] = "mean"):
    """Mean squared error (``torch.nn.MSELoss``) for regression."""
    import torch

    return _Regression(torch.nn.MSELoss(reduction=reduction))


def _regression_module():
    import torch

    class Regression(torch.nn.Module):
        """Wraps a regression criterion so that ``(N, 1)`` outputs meet ``(N,)`` targets."""

        def __init__(self, criterion: torch.nn.Module) -> None:
            super().__init__()
            self.criterion = criterion

        def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
                outputs = outputs.squeeze(-1)
            return self.criterion(outputs, targets.to(outputs.dtype))

    return Regression


def _Regression(criterion):  # noqa: N802 - builds the module class lazily so that torch loads only when used
    return _regression_module()(criterion)


@hookimpl
def plugtrain_losses():
    return [
        Component("CrossEntropy", cross_entropy),
        Component("MSE", mse),
    ]
