"""Callbacks: hooks into the loop at epoch boundaries."""

from __future__ import annotations

import math
from typing import Any

from plugtrain import Component, hookimpl


class EarlyStopping:
    """Stop when the run's primary metric has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int = 5, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(trainer.primary_metric)
        if value is None or math.isnan(value):
            return
        better = (
            self.best is None
            or (trainer.mode == "max" and value > self.best + self.min_delta)
            or (trainer.mode == "min" and value < self.best - self.min_delta)
        )
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.request_stop(f"early stopping: {trainer.primary_metric} did not improve for "
                                     f"{self.patience} epochs (best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


@hookimpl
def plugtrain_callbacks():
    return [Component("early-stopping", EarlyStopping)]
