"""Callbacks: hooks into the loop at epoch boundaries, and the model EMA of ``trainer.ema``.

Each hook gets a :class:`~plugtrain.core.runtime.view.RunView` (``run``), not the trainer; these callbacks use only
what it documents. ``epoch`` is the 1-based number of the epoch (the first epoch is 1), as the runtime passes it.
``run.model`` is the backbone being trained. :func:`model_ema` (timm's ``ModelEmaV3``) has
the role ``ema``: the runtime builds it for ``trainer.ema = true``; a spec does not list it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Ge, Interval

from plugtrain import Component, hookimpl

if TYPE_CHECKING:
    from plugtrain.core.runtime.view import RunView


class EarlyStopping:
    """Stop when the run's primary metric has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: Annotated[int, Ge(1)] = 5, min_delta: Annotated[float, Ge(0)] = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, run: RunView, epoch: int, metrics: dict[str, float]) -> None:
        from plugtrain.core.runtime.compare import is_better

        value = metrics.get(run.primary_metric)
        if value is None or math.isnan(value):
            return
        if self.best is None or is_better(value, self.best, run.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                run.request_stop(f"early stopping: {run.primary_metric} did not improve for "
                                     f"{self.patience} epochs (best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class Unfreeze:
    """Unfreeze the backbone layers frozen by ``backbone.freeze`` after ``backbone.unfreeze_after_epochs`` epochs.

    At the start of epoch ``after_epochs + 1`` (1-based: once that many epochs are complete) the parameters under
    the model's ``plugtrain_frozen`` prefixes get ``requires_grad = True`` again. ``after_epochs`` defaults to the
    backbone's ``unfreeze_after_epochs``. Frozen parameters stayed in the optimizer (with no gradient, so they were
    skipped), so the optimizer needs no change. When something was unfrozen the callback calls
    ``run.requires_grad_changed()``: a DDP wrapper must be rebuilt, since DDP reduces only
    the parameters that required gradients when it was built. The callback keeps no state: on a resumed run it
    unfreezes again at the first epoch past the threshold.
    """

    def __init__(self, after_epochs: Annotated[int, Ge(0)] | None = None) -> None:
        self.after_epochs = after_epochs

    def threshold(self, run: RunView) -> int | None:
        from plugtrain.plugins.backbones import _unwrap

        if self.after_epochs is not None:
            return self.after_epochs
        return getattr(_unwrap(run.model), "plugtrain_unfreeze_after", None)

    def on_epoch_start(self, run: RunView, epoch: int) -> None:
        from plugtrain.plugins.backbones import unfreeze_model

        after = self.threshold(run)
        if after is None or epoch <= after:  # epoch is 1-based: epochs 1..after train with the layers frozen
            return
        if unfreeze_model(run.model):
            changed = getattr(run, "requires_grad_changed", None)
            if callable(changed):
                changed()


def model_ema(model: Any, decay: Annotated[float, Interval(ge=0, le=1)] = 0.9998) -> Any:
    """timm's ``ModelEmaV3`` of ``model``: ``.module`` is the averaged copy, ``update(model, step=)`` moves it."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


@hookimpl
def plugtrain_callbacks():
    return [
        Component("early-stopping", EarlyStopping),
        Component("unfreeze", Unfreeze, summary="Unfreeze the backbone's frozen layers after "
                                                "backbone.unfreeze_after_epochs epochs."),
        Component("timm-ema", model_ema, summary="timm's ModelEmaV3: the model EMA of trainer.ema", roles=("ema",)),
    ]
