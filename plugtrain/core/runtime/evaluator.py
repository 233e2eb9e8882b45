"""Validation: the loss and metrics of the model (and of its EMA and SWA averages) over the validation split,
reduced across ranks, and what metrics draw (images, embeddings) sent to the loggers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from plugtrain.core.runtime.distributed import DistEnv
from plugtrain.core.runtime.step import ModelInput, batch_images


def _scalars(name: str, value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_scalars(f"{name}/{k}", v))
        return out
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu()
        if value.numel() == 1:
            return {name: float(value.reshape(()))}
        return {f"{name}/{i}": float(v) for i, v in enumerate(value.reshape(-1))}
    return {name: float(value)}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, criterion: torch.nn.Module, loader: Any, metrics: dict[str, Any],
                   model_input: ModelInput, autocast: Callable[[], Any], dist: DistEnv,
                   prefix: str = "val") -> tuple[dict[str, float], int]:
    """Loss and metrics of ``model`` over ``loader`` (reduced across ranks); returns ``(metrics, skipped)``.
    ``model_input`` moves and normalises the batches (its device is the evaluation's).

    Under DDP every rank first takes rank 0's buffers (batch-norm running statistics) of ``model`` and
    ``criterion``: each rank's last training forward updated its own from its own batch, and the checkpoints hold rank
    0's, so without this each rank would score its share of the samples with other weights than the ones saved."""
    device = model_input.device
    dist.broadcast_tensors([*model.buffers(), *criterion.buffers()])
    was_training = model.training
    model.eval()
    criterion.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    skipped = 0
    for batch in loader:
        skipped += len(batch["skipped"])
        images = batch_images(batch, prefix)
        if images is None:
            continue
        images = model_input(images)
        targets = batch["targets"].to(device, non_blocking=True)
        with autocast():
            outputs = model(images)
        outputs = (outputs[0] if isinstance(outputs, (tuple, list)) else outputs).float()
        loss = criterion(outputs, targets)
        loss = loss if loss.ndim == 0 else loss.mean()
        loss_sum += loss.double() * images.shape[0]
        count += images.shape[0]
        preds = outputs.squeeze(-1) if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1 else outputs
        for m in metrics.values():
            m.update(preds, targets)
    extra = torch.tensor(float(skipped), dtype=torch.float64, device=device)
    totals = dist.all_reduce(torch.stack([loss_sum, count, extra]).to(dist.reduce_device))
    loss_total, n, skipped_total = totals.tolist()
    out = {f"{prefix}/loss": loss_total / n if n else math.nan}
    for name, m in metrics.items():
        out.update(_scalars(f"{prefix}/{name}", m.compute()))
        m.reset()
    model.train(was_training)
    criterion.train(was_training)
    return out, int(skipped_total)


class OutputCollector:
    """A metric-shaped keeper of every output and target of an evaluation (on the CPU), for a task's
    ``report_outputs``; it adds no scalar. ``outputs`` and ``targets`` hold the last ``compute()``'s, concatenated
    (``None`` when nothing was evaluated). One process only: nothing is gathered across ranks."""

    def __init__(self) -> None:
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.outputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None

    def to(self, device: Any) -> OutputCollector:
        return self

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self._outputs.append(preds.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def compute(self) -> dict[str, float]:
        self.outputs = torch.cat(self._outputs) if self._outputs else None
        self.targets = torch.cat(self._targets) if self._targets else None
        return {}

    def reset(self) -> None:
        self._outputs, self._targets = [], []


class Evaluator:
    """Evaluates a model, its EMA and its SWA average on the validation loader with the run's metrics.

    ``unsharded`` is a context in which a sharded (FSDP) model holds its full parameters on every rank."""

    def __init__(self, criterion: torch.nn.Module, loader: Any, metrics: dict[str, Any], model_input: ModelInput,
                 autocast: Callable[[], Any], dist: DistEnv, ema: Any = None,
                 unsharded: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.criterion, self.loader, self.model_input, self.autocast, self.dist = (
            criterion, loader, model_input, autocast, dist)
        self.metrics = {k: m.to(model_input.device) for k, m in metrics.items()}
        self.ema = ema
        self.ema_metrics = {k: m.clone() for k, m in self.metrics.items()} if ema is not None else None
        self.unsharded = unsharded

    def validate(self, model: torch.nn.Module, loggers: list[Any], step: int) -> dict[str, float]:
        """``val/*`` (and ``val_ema/*``) metrics; ``data/skipped_val`` when samples were skipped."""
        with self.unsharded():
            out, skipped = evaluate_model(model, self.criterion, self.loader, self.metrics, self.model_input,
                                          self.autocast, self.dist, "val")
        log_visuals(loggers, "val", self.metrics, step)
        if self.ema is not None:
            ema_out, _ = evaluate_model(self.ema.module, self.criterion, self.loader, self.ema_metrics,
                                        self.model_input, self.autocast, self.dist, "val_ema")
            out.update(ema_out)
            log_visuals(loggers, "val_ema", self.ema_metrics, step)
        if skipped:
            out["data/skipped_val"] = skipped
        return out

    def evaluate_swa(self, swa: Any, train_loader: Any, sampler: Any, epoch: int) -> dict[str, float]:
        """``val_swa/*``: the SWA average, its batch-norm statistics recomputed first over one pass of the training
        data (order of ``epoch``)."""
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in swa.modules()):
            self._update_bn(swa, train_loader, sampler, epoch)
        metrics = {k: m.clone() for k, m in self.metrics.items()}
        out, _ = evaluate_model(swa.module, self.criterion, self.loader, metrics, self.model_input,
                                self.autocast, self.dist, "val_swa")
        return out

    @torch.no_grad()
    def _update_bn(self, swa: Any, train_loader: Any, sampler: Any, epoch: int) -> None:
        bns = [m for m in swa.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        swa.train()
        sampler.set_epoch(epoch, 0)
        for batch in train_loader:
            if batch["images"] is not None:
                swa(self.model_input(batch["images"]))
        swa.eval()


def log_visuals(loggers: list[Any], prefix: str, metrics: dict[str, Any], step: int) -> None:
    """What metrics drew in ``compute()``: ``image()`` (HxWx3 uint8) to each logger's ``log_image`` and
    ``embeddings()`` (``(tensor, labels)``) to ``log_embedding``, tagged ``<prefix>/<metric>`` (rank 0)."""
    for name, m in metrics.items() if loggers else ():
        for method, hook in (("image", "log_image"), ("embeddings", "log_embedding")):
            fn = getattr(m, method, None)
            value = fn() if callable(fn) else None
            if value is None:
                continue
            for logger in loggers:
                log = getattr(logger, hook, None)
                if callable(log):
                    args = (value,) if method == "image" else tuple(value)
                    log(f"{prefix}/{name}", *args, step)
