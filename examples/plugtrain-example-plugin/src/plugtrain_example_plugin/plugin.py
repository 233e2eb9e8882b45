"""The plugtrain plugin of this package: one backbone, one loss and one logger.

plugtrain finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.plugtrain]
    example = "plugtrain_example_plugin.plugin"

and calls each ``@hookimpl`` function below the first time a component of its kind is listed, shown, checked or
built. Each hook returns a list of :class:`plugtrain.Component`: a name, a factory and a one-line summary.

The factory's signature *is* the component's parameter list: ``plugtrain show backbones example-tinycnn`` and the
spec checker read names, annotations and defaults from it. Arguments the runtime supplies (``num_classes`` for a
backbone, ``run_dir`` for a logger, ...) are *context* arguments: never shown, never set from a spec.

An annotation can carry a contract: ``gamma: Annotated[float, Ge(0)]`` (annotated-types) makes ``plugtrain check``
refuse ``gamma = -1`` with the file, line and column, ``plugtrain show`` print ``float >= 0`` and ``plugtrain
schema`` write ``"minimum": 0``. A float parameter never takes ``inf`` or ``nan`` unless its annotation says so.

Heavy imports (torch) stay inside functions, so that ``plugtrain list`` and listing other kinds stay fast.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge

from plugtrain import Component, hookimpl

# -- backbone ----------------------------------------------------------------------------------------------------------


@functools.cache
def _tiny_cnn_class():
    """The TinyCNN module class, created on first use so that importing this module never imports torch."""
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        """Three conv-BN-ReLU stages (stride 1, 2, 2), global average pooling and an optional linear head."""

        def __init__(self, num_classes: int, in_chans: int, width: int) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            chans = in_chans
            for i, out in enumerate((width, width * 2, width * 4)):
                layers += [
                    nn.Conv2d(chans, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                chans = out
            self.features = nn.Sequential(*layers)
            self.num_features = chans  # the embedding width, as timm models call it
            self.num_classes = num_classes
            self.head = nn.Linear(chans, num_classes) if num_classes > 0 else nn.Identity()

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.forward_features(x))

    return TinyCNN


def tiny_cnn(num_classes: int = 0, in_chans: int = 3, width: int = 16):
    """A tiny three-stage CNN, for tests and quick experiments on small images.

    ``in_chans`` is the number of image channels (1 for grayscale), ``width`` the channels of the first stage (the
    next two have 2x and 4x as many; the embedding is ``4 * width`` wide). With ``num_classes`` 0 (a context argument
    supplied by the runtime) the model returns the embedding instead of logits.
    """
    if width < 1:
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(f"example-tinycnn: width must be at least 1, got {width}")
    return _tiny_cnn_class()(num_classes=num_classes, in_chans=in_chans, width=width)


# -- loss --------------------------------------------------------------------------------------------------------------


@functools.cache
def _focal_loss_class():
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class FocalLoss(nn.Module):
        """Focal loss (Lin et al., 2017) on logits ``(N, C)`` and class indices ``(N,)``."""

        def __init__(self, gamma: float, alpha: float | None, reduction: str) -> None:
            super().__init__()
            self.gamma = gamma
            self.alpha = alpha
            self.reduction = reduction

        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(logits.float(), dim=-1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
            loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
            if self.alpha is not None:
                loss = self.alpha * loss
            if self.reduction == "mean":
                return loss.mean()
            if self.reduction == "sum":
                return loss.sum()
            return loss

    return FocalLoss


def focal_loss(gamma: Annotated[float, Ge(0)] = 2.0, alpha: float | None = None,
               reduction: Literal["mean", "sum", "none"] = "mean"):
    """Focal loss: cross-entropy scaled by ``(1 - p_t) ** gamma`` to focus training on hard examples.

    ``gamma`` 0 is plain cross-entropy; larger values down-weight well-classified samples more (``gamma >= 0``: the
    annotation says so, and ``plugtrain check`` refuses a negative one before anything runs). ``alpha``, when set,
    scales the whole loss.
    """
    if gamma < 0 or math.isnan(gamma):  # for Python callers: a spec's value was checked against the annotation
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(f"example-focal: gamma must be >= 0, got {gamma}")
    return _focal_loss_class()(gamma=gamma, alpha=alpha, reduction=reduction)


# -- logger ------------------------------------------------------------------------------------------------------------


class JsonlLogger:
    """Appends one JSON object per ``log_metrics`` call to ``<run_dir>/<filename>``: ``{"step": 3, "val/loss": ...}``."""

    def __init__(self, run_dir: Path, filename: str = "metrics.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


def _plain(value: Any) -> Any:
    """A JSON-able scalar: tensors and numpy numbers become Python numbers, NaN and inf become strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


# -- hooks -------------------------------------------------------------------------------------------------------------


@hookimpl
def plugtrain_backbones():
    return [Component("example-tinycnn", tiny_cnn, summary="a tiny three-stage CNN (example plugin)")]


@hookimpl
def plugtrain_losses():
    return [Component("example-focal", focal_loss, summary="focal loss with focusing parameter gamma (example plugin)")]


@hookimpl
def plugtrain_loggers():
    return [Component("example-jsonl", JsonlLogger, summary="a JSON line per log_metrics call in <run_dir>/metrics.jsonl")]
