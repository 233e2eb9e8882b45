"""One optimizer step: forward and backward over the micro-batches of an accumulation group, then clip, step,
update the loss scaler, zero the gradients, step a per-step scheduler and the EMA.

:meth:`TrainStep.step` is the whole of it and reads top to bottom. It reads nothing back from the device itself:
the micro-batch losses it returns stay on the device until the trainer looks at them at a log interval. The one
exception is fp16's ``GradScaler``, whose ``step`` reads back whether the gradients were finite to decide whether to
skip the optimizer step (bf16 and fp32 have no scaler).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from plugtrain.core.errors import DataFault
from plugtrain.core.runtime.precision import autocast

MicroBatch = tuple[torch.Tensor | None, torch.Tensor | None, bool]  # images, targets, placeholder


class Network(torch.nn.Module):
    """Backbone and loss in one module, so that DDP averages the loss's parameters (ArcFace centres) too."""

    def __init__(self, backbone: torch.nn.Module, criterion: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.criterion = criterion

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.backbone(images)
        loss = loss_of(self.criterion, outputs, targets, images)
        return outputs, (loss if loss.ndim == 0 else loss.mean())


def loss_of(criterion: Any, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``criterion(outputs, targets)``, plus ``inputs=`` (the model's input batch) for a loss that asks for them
    with ``plugtrain_takes_inputs = True`` (a loss that runs another model on the batch, e.g. a teacher)."""
    if getattr(criterion, "plugtrain_takes_inputs", False):
        return criterion(outputs, targets, inputs=inputs)
    return criterion(outputs, targets)


class ModelInput:
    """A collated batch of raw images -> the float32 tensor the model takes, on the device.

    Samples reach the collate as raw pixel values (``uint8`` CHW; 16-bit and float pixels as float32), so that
    workers, pinning and the host-to-device copy move a quarter of the bytes; the batch is normalised on the device in
    one operation, ``(x - scale * mean) / (scale * std)`` per channel (``scale`` 255 for 8-bit data, see
    :func:`plugtrain.core.runtime.build.pixel_scale`). With ``augmentations.normalize = false`` it is only made float.
    """

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device,
                 memory_format: torch.memory_format = torch.preserve_format, scale: float = 255.0) -> None:
        self.device, self.memory_format = device, memory_format
        self.mean = self.std = None
        if mean is not None and std is not None:
            self.mean = torch.tensor([m * scale for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor([s * scale for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @classmethod
    def for_spec(cls, spec: Any, in_chans: int, device: torch.device,
                 memory_format: torch.memory_format = torch.preserve_format) -> ModelInput:
        from plugtrain.core.runtime.build import normalization, pixel_scale

        mean, std = normalization(spec, in_chans) if spec.augmentations.normalize else (None, None)
        return cls(mean, std, device, memory_format, pixel_scale(spec))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True, memory_format=self.memory_format).float()
        return x if self.mean is None else (x - per_channel(self.mean, x)) / per_channel(self.std, x)


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` (``1 x C x 1 x 1``) shaped to broadcast over the channels of ``x`` of any spatial rank (``N x C x ...``:
    signals, images, volumes); for images ``v`` itself."""
    return v if x.ndim == 4 else v.view(1, -1, *([1] * (x.ndim - 2)))


def batch_images(batch: dict[str, Any], split: str) -> torch.Tensor | None:
    """The batch's images (None when every sample was skipped); a sample error becomes one readable message."""
    if batch["error"] is not None:
        path, reason = batch["error"]
        raise DataFault(str(path), str(reason), split)
    return batch["images"]


class Warmup:
    """Linear warmup over the first ``steps`` optimizer steps, from ``start`` times every group's lr to 1 times.

    Applied as a scale of the lrs during one step and undone after it, so that schedulers never see it."""

    def __init__(self, steps: int, start: float) -> None:
        self.steps, self.start = steps, start

    def factor(self, step: int) -> float:
        if not self.steps or step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * step / self.steps

    @contextlib.contextmanager
    def scaled(self, optimizers: Sequence[Any], step: int):  # noqa: ANN201
        factor = self.factor(step)
        if factor == 1.0:
            yield
            return
        saved = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * factor
        try:
            yield
        finally:
            for opt, lrs in zip(optimizers, saved, strict=True):
                for g, lr in zip(opt.param_groups, lrs, strict=True):
                    g["lr"] = lr


@contextlib.contextmanager
def frozen_bn_stats(module: torch.nn.Module):  # noqa: ANN201
    """Batch-norm running statistics unchanged by the forwards inside (momentum 0 for the duration)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def train_mode(net: torch.nn.Module, backbone: torch.nn.Module) -> None:
    """``net.train()``; batch-norm layers of a backbone that asks for it (``plugtrain_freeze_bn``) whose parameters
    are all frozen stay in eval mode, so that their running statistics do not move."""
    net.train()
    if getattr(backbone, "plugtrain_freeze_bn", False):
        for m in backbone.modules():
            params = list(m.parameters(recurse=False))
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad
                                                                                           for p in params):
                m.eval()


class TrainStep:
    """The network as trained and everything one optimizer step does to it.

    ``network`` is backbone + loss; ``net`` is what the step runs: ``network`` itself, or its DDP wrapper
    (:meth:`distribute`). ``sync`` is the strategy's gradient-sync switch (DDP's ``no_sync``, or FSDP's
    :class:`~.fsdp.ForwardSync`), called before every micro-batch's forward with whether its backward reduces
    gradients. ``scheduler`` is a per-step scheduler (a per-epoch one is the trainer's)."""

    def __init__(self, network: Network, optimizers: list[Any], *, scaler: Any, precision: str,
                 device: torch.device, model_input: ModelInput, warmup: Warmup, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None, sam: bool = False, mixup: Any = None, scheduler: Any = None,
                 ema: Any = None, ema_model: torch.nn.Module | None = None, sync: Any = None,
                 placeholder: MicroBatch | None = None) -> None:
        self.network, self.optimizers, self.scaler = network, optimizers, scaler
        self.precision, self.device, self.model_input, self.warmup = precision, device, model_input, warmup
        self.clip_grad_norm, self.clip_grad_value = clip_grad_norm, clip_grad_value
        self.sam, self.mixup, self.scheduler, self.ema, self.ema_model = sam, mixup, scheduler, ema, ema_model
        self.sync = sync or (lambda sync: contextlib.nullcontext())
        self.net: torch.nn.Module = network
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.placeholder = placeholder  # what a rank with nothing readable feeds the network (distributed only)
        self.lrs: list[float] = []  # every parameter group's lr in the last step (warmup included)
        self.grad_norm: torch.Tensor | None = None  # the last measured step's gradient norm before clipping

    def current_lrs(self, step: int) -> list[float]:
        """Each parameter group's lr in the last optimizer step (before the first: what step ``step`` will use)."""
        if self.lrs:
            return self.lrs
        factor = self.warmup.factor(step)
        return [float(g["lr"]) * factor for opt in self.optimizers for g in opt.param_groups]

    def micro_batch(self, images: torch.Tensor | None, targets: torch.Tensor, skipped: bool) -> MicroBatch:
        """A loader batch as a micro-batch ``(images, targets, placeholder)``.

        A batch cut to one sample by skipped files is doubled (batch-norm needs two). A batch with nothing readable
        is ``None`` images in one process; under DDP / FSDP it becomes a placeholder (the rank's last readable
        batch, or the initial ``placeholder``) that joins the gradient reduction with its loss weighted 0."""
        if isinstance(images, torch.Tensor) and skipped and len(images) == 1:
            images, targets = torch.cat([images, images]), torch.cat([targets, targets])
        if images is not None:
            if self.placeholder is not None:
                self.placeholder = (images, targets, True)
            return images, targets, False
        if self.placeholder is None:
            return None, targets, False
        return self.placeholder

    def distribute(self, ddp: bool) -> None:
        """(Re)build ``net``: a DDP wrapper when ``ddp`` (it reduces only the parameters that required gradients when
        it was built, so this runs again after a callback froze or unfroze some), else the network itself."""
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        if not ddp:
            self.net = self.network
            return
        from torch.nn.parallel import DistributedDataParallel

        self.net = None  # the old wrapper's hooks go with it
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapper = DistributedDataParallel(self.network, device_ids=ids)
        self.sync = lambda sync: contextlib.nullcontext() if sync else wrapper.no_sync()
        self.net = wrapper

    def add_missing_params(self, module: torch.nn.Module, scheduler: Any = None) -> int:
        """Give ``module``'s trainable parameters that no optimizer holds (an optimizer that picked its own, then a
        callback unfroze more) a parameter group of their own in the first optimizer; returns how many."""
        known = {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [p for p in module.parameters() if p.requires_grad and id(p) not in known]
        if not missing or not self.optimizers:
            return 0
        opt = self.optimizers[0]
        opt.add_param_group({"params": missing})
        new = opt.param_groups[-1]
        new.setdefault("initial_lr", new["lr"])
        base_lrs = getattr(scheduler, "base_lrs", None)  # the run's scheduler learns the new group's lr
        if isinstance(base_lrs, list) and len(base_lrs) == len(opt.param_groups) - 1:
            base_lrs.append(new["initial_lr"])
        return len(missing)

    def autocast(self) -> Any:
        return autocast(self.device.type, self.precision)

    def step(self, micro_batches: Sequence[MicroBatch], step: int,
             measure: bool = False) -> list[tuple[torch.Tensor, int]]:
        """One optimizer step (number ``step``, 0-based) over the raw micro-batches of :meth:`micro_batch`;
        returns each real micro-batch's ``(loss, samples)``, losses on the device. A micro-batch without images
        adds nothing; a placeholder adds zero gradients and leaves batch-norm statistics as they were. ``measure``:
        keep the gradient norm before clipping in :attr:`grad_norm` (a log step; on the device)."""
        losses: list[tuple[torch.Tensor, int]] = []
        n = len(micro_batches)
        images = targets = None
        fake = False
        for i, (images, targets, fake) in enumerate(micro_batches):
            if images is None:
                continue
            with frozen_bn_stats(self.network) if fake else contextlib.nullcontext():
                images = self.model_input(images)  # on the device, normalised (mixup mixes normalised images)
                targets = targets.to(self.device, non_blocking=True)
                if self.mixup is not None and not fake:
                    images, targets = self.mixup(images, targets)
                loss = self.forward_backward(images, targets, scale=n, sync=i == n - 1, weight=0.0 if fake else 1.0)
            if not fake:
                losses.append((loss, images.shape[0]))
        with frozen_bn_stats(self.network) if fake else contextlib.nullcontext():
            self.unscale_and_clip(measure)
            with self.warmup.scaled(self.optimizers, step):
                self.lrs = [float(g["lr"]) for opt in self.optimizers for g in opt.param_groups]
                if not self.sam:
                    for opt in self.optimizers:
                        self.scaler.step(opt)
                elif images is not None:  # sharpness-aware: step to the worst point nearby, recompute the gradient
                    opt = self.optimizers[0]
                    opt.first_step()
                    opt.zero_grad(set_to_none=True)
                    self.forward_backward(images, targets, scale=1, sync=True, weight=0.0 if fake else 1.0)
                    self.unscale_and_clip()
                    opt.second_step()
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.ema_model, step=step)
        return losses

    def forward_backward(self, images: torch.Tensor, targets: torch.Tensor, scale: int = 1, sync: bool = True,
                         weight: float = 1.0) -> torch.Tensor:
        """Forward and backward of one micro-batch; its loss is divided by ``scale`` (the micro-batches per step)
        and multiplied by ``weight``; gradients are reduced across ranks only when ``sync``."""
        with self.sync(sync):
            with self.autocast():
                _, loss = self.net(images, targets)
            scaled = loss / scale if scale > 1 else loss
            self.scaler.scale(scaled * weight if weight != 1.0 else scaled).backward()
        return loss.detach()

    def unscale_and_clip(self, measure: bool = False) -> None:
        """Clip the gradients as the spec says (unscaled first under fp16); ``measure``: keep their norm first."""
        if not (self.clip_grad_norm or self.clip_grad_value or measure):
            return
        if self.scaler.is_enabled():
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        norm = None
        if self.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        elif measure:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if measure:
            self.grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
        if self.clip_grad_value:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_grad_value)
