"""Where a run's numbers go: the console (progress bar or plain lines) and the loggers (rank 0 only).

:class:`Reporter` is the trainer's one door to them: per-step values at log intervals (reduced across ranks here,
so that every rank takes part in the same collectives), epoch metrics, the final hyperparameters, notes.
"""

from __future__ import annotations

import math
from typing import Any

from plugtrain.core.runtime.distributed import DistEnv
from plugtrain.core.runtime.progress import Progress
from plugtrain.core.spec.model import to_dict


class Reporter:
    def __init__(self, progress: Progress, dist: DistEnv, loggers: list[Any] | None = None) -> None:
        self.progress, self.dist, self.loggers = progress, dist, loggers or []

    def step(self, step: int, loss_sum: float, count: int, lrs: list[float], grad_norm: Any,
             throughput: float) -> dict[str, float]:
        """A log interval (collective under DDP): ``step/loss`` is the interval's mean over every rank, ``step/lr``
        (``step/lr_N`` per further parameter group) the lrs the step used, ``step/grad_norm`` the gradient norm
        before clipping, ``step/throughput`` samples/s over every rank."""
        if self.dist.distributed:
            loss_sum, count = self.dist.all_reduce(self.dist.collective_tensor([loss_sum, float(count)])).tolist()
        metrics = {"step/loss": loss_sum / count if count else math.nan, "step/lr": lrs[0],
                   **{f"step/lr_{i}": lr for i, lr in enumerate(lrs[1:], 1)}, "step/throughput": throughput}
        if grad_norm is not None:
            metrics["step/grad_norm"] = float(grad_norm)
        self.progress.log(step, metrics["step/loss"], lrs[0], throughput)
        for logger in self.loggers:
            if callable(getattr(logger, "log_step_metrics", None)):
                logger.log_step_metrics(metrics, step)
        return metrics

    def epoch(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), step)

    def data_hint(self, epoch: int, metrics: dict[str, float]) -> None:
        """One line when the epoch spent most of its time waiting for data."""
        waiting = metrics.get("train/data_time", 0.0) / max(metrics.get("train/step_time", 0.0), 1e-9)
        if waiting > 0.5:
            self.message(f"hint: epoch {epoch} waited for data {waiting:.0%} of the time: more data.num_workers or a "
                         'faster decoder (data.decoder = "cv2") would help')

    def hparams(self, spec: Any, final: dict[str, float]) -> None:
        """The flattened resolved spec and the final metrics, to each logger's ``log_hparams``."""
        hparams = flatten(to_dict(spec))
        for logger in self.loggers:
            if callable(getattr(logger, "log_hparams", None)):
                logger.log_hparams(hparams, {k: v for k, v in final.items() if k != "epoch"})

    def message(self, text: str) -> None:
        self.progress.message(text)

    def close(self) -> None:
        for logger in self.loggers:
            try:
                logger.close()
            except Exception:  # a logger failing to close must not hide the run's outcome
                pass
        self.loggers = []
        self.progress.close()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become strings (TensorBoard hparams take scalars)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(v)
        else:
            out[key] = v
    return out
