"""The training loop.

:meth:`Trainer._train_step` is the whole training step and reads top to bottom: move the batch, mixup, forward and
backward (``no_sync`` on micro-batches that do not step), then on the last micro-batch of an accumulation group:
unscale and clip, the optimizer step (two passes for SAM) under the warmup lr scale, the scaler update, zero grads,
a per-step scheduler, EMA. Nothing in it reads a value back from the device: losses are summed on the device and
looked at only at log intervals (``trainer.log_every_steps``), before a checkpoint and at the end of an epoch.

Exact resume: the batch order of an epoch and every sample's augmentation are functions of ``(seed, epoch, index)``
(see :mod:`plugtrain.core.runtime.loader`), so a checkpoint needs only the epoch, the batch position within it, the
model / optimizer / scheduler / scaler / EMA / callback states and the RNG states (for dropout, drop-path, mixup).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from plugtrain.core.errors import PlugtrainError, TrainingFailed
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.runtime import fsdp
from plugtrain.core.runtime.build import Built, normalization, train_sampler
from plugtrain.core.runtime.distributed import DistEnv
from plugtrain.core.runtime.loader import ShardedBatchSampler, make_loader, mix_seed
from plugtrain.core.runtime.progress import Progress
from plugtrain.core.spec.model import to_dict


class Interrupted(Exception):
    """SIGTERM / SIGINT: ``last.pt`` was written at a step boundary; ``--resume auto`` continues exactly."""

    def __init__(self, signum: int, checkpoint: Path | None, step: int) -> None:
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        super().__init__(f"signal {signum} at step {step}")


class Network(torch.nn.Module):
    """Backbone and loss in one module, so that DDP averages the loss's parameters (ArcFace centres) too."""

    def __init__(self, backbone: torch.nn.Module, criterion: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.criterion = criterion

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.backbone(images)
        loss = self.criterion(outputs, targets)
        return outputs, (loss if loss.ndim == 0 else loss.mean())


class ModelInput:
    """A collated batch of raw images -> the float32 tensor the model takes, on the device.

    Samples reach the collate as raw pixel values (``uint8`` CHW; float where a transform made them float), so that
    workers, pinning and the host-to-device copy move a quarter of the bytes. The batch is moved first, then
    normalised on the device in one operation, ``(x - 255 * mean) / (255 * std)`` per channel: what albumentations'
    ``Normalize(max_pixel_value=255)`` did to each sample, for uint8 and float images alike. With
    ``augmentations.normalize = false`` the batch is only made float.
    """

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device,
                 memory_format: torch.memory_format = torch.preserve_format) -> None:
        self.device, self.memory_format = device, memory_format
        self.mean = self.std = None
        if mean is not None and std is not None:
            self.mean = torch.tensor([m * 255.0 for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor([s * 255.0 for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @classmethod
    def for_spec(cls, spec: Any, in_chans: int, device: torch.device,
                 memory_format: torch.memory_format = torch.preserve_format) -> ModelInput:
        mean, std = normalization(spec, in_chans) if spec.augmentations.normalize else (None, None)
        return cls(mean, std, device, memory_format)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True, memory_format=self.memory_format).float()
        return x if self.mean is None else (x - self.mean) / self.std


def batch_images(batch: dict[str, Any], split: str) -> torch.Tensor | None:
    """The batch's images (None when every sample was skipped); a sample error becomes one readable message."""
    if batch["error"] is not None:
        path, reason = batch["error"]
        raise PlugtrainError(f"{path}: {reason} ({split} split; set data.on_error = \"skip\" to skip such samples)")
    return batch["images"]


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
                   model_input: ModelInput, autocast: Any, dist: DistEnv,
                   prefix: str = "val") -> tuple[dict[str, float], int]:
    """Loss and metrics of ``model`` over ``loader`` (reduced across ranks); returns ``(metrics, skipped)``.
    ``model_input`` moves and normalises the batches (its device is the evaluation's)."""
    device = model_input.device
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


class Trainer:
    """Runs a built spec: epochs of training steps, validation, checkpoints, loggers, callbacks.

    Callbacks see ``trainer.epoch`` (epochs completed), ``trainer.global_step``, ``trainer.primary_metric``,
    ``trainer.mode``, ``trainer.metrics`` (the latest epoch's), ``trainer.model``, ``trainer.spec`` and can call
    :meth:`request_stop`.
    """

    def __init__(self, built: Built, dist: DistEnv, run_dir: Path | None = None, loggers: list[Any] | None = None,
                 progress: Progress | None = None) -> None:
        spec = built.spec
        t = spec.trainer
        self.built, self.spec, self.dist = built, spec, dist
        self.device = dist.device
        self.run_dir = run_dir
        self.loggers = loggers or []
        self.epochs = spec.run.epochs
        self.primary_metric, self.mode = spec.primary_metric, spec.mode
        self.progress = progress or Progress(self.epochs, enabled=False)
        self.callbacks = built.callbacks

        # -- device, precision, model --------------------------------------------------------------------------------
        self.memory_format = torch.channels_last if t.channels_last else torch.preserve_format
        self.backbone = built.backbone.to(self.device, memory_format=self.memory_format)
        if t.sync_batchnorm and dist.distributed:
            self.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone)
        self.criterion = built.criterion.to(self.device)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if self.scaler.is_enabled():  # a step the scaler skips (inf gradients) still advances the schedule, by design
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        self.ema = None
        if t.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.backbone, decay=t.ema_decay)
        self.swa = None
        if t.swa:
            self.swa = torch.optim.swa_utils.AveragedModel(self.backbone)
        forward_backbone = torch.compile(self.backbone) if t.compile else self.backbone
        self.net = Network(forward_backbone, self.criterion)
        self.ddp = None
        self.sharded = t.strategy == "fsdp" and dist.distributed  # FSDP2: sharded by fsdp.shard before the trainer
        self._fsdp_sync = fsdp.ForwardSync() if self.sharded else None
        self._stale_shards = False  # resumed unsharded from an fsdp run's shards: delete them at the first save
        self._wrap()
        self.optimizer = built.optimizer
        self.optimizers = [o for o in (built.optimizer, built.loss_optimizer) if o is not None]
        self.scheduler = built.scheduler
        self.swa_scheduler = None
        if self.swa is not None and t.swa_lr is not None and self.optimizer is not None:
            self.swa_scheduler = torch.optim.swa_utils.SWALR(self.optimizer, swa_lr=t.swa_lr)
        self.swa_start = t.swa_start_epoch if t.swa_start_epoch is not None else max(1, (self.epochs * 3) // 4)
        self.mixup = built.mixup
        self.model_input = ModelInput.for_spec(spec, built.in_chans, self.device, self.memory_format)

        # -- data ----------------------------------------------------------------------------------------------------
        d = spec.data
        pin = d.pin_memory if d.pin_memory is not None else self.device.type == "cuda"
        loader_args = dict(num_workers=d.num_workers, on_error=d.on_error, pin_memory=pin,
                           persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor)
        self.sampler = train_sampler(built, dist) if built.optimizer is not None else None
        if self.sampler is not None:
            self.train_loader = make_loader(built.train_data, self.sampler, seed=mix_seed(spec.run.seed, 1),
                                            **loader_args)
        val_bs = d.val_batch_size or d.batch_size
        self.val_loader = make_loader(built.val_data, ShardedBatchSampler(len(built.val_data), val_bs, dist.rank,
                                                                          dist.world_size),
                                      seed=mix_seed(spec.run.seed, 2), **loader_args)
        self.val_metrics = {k: m.to(self.device) for k, m in built.metrics.items()}
        self.ema_metrics = {k: m.clone() for k, m in self.val_metrics.items()} if self.ema is not None else None

        # -- progress state (all of it in checkpoints) ---------------------------------------------------------------
        self.epoch = 0  # epochs completed; the epoch in progress is self.epoch (0-based)
        self.batch_in_epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.epoch_checkpoints: list[list[Any]] = []  # [file name, primary metric value]
        self.history: list[dict[str, float]] = []
        self.metrics: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.resumed_from: Path | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._signal: int | None = None  # received by this process
        self._last_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # see _placeholder_batch
        self._stop_signal: int | None = None  # agreed by every rank
        self._reset_epoch_state()
        self._reset_interval()

    # -- public API for callbacks ----------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.backbone

    def request_stop(self, reason: str) -> None:
        """Stop after the current epoch (its checkpoints are still written)."""
        self.stop_reason = reason

    def handle_signal(self, signum: int) -> None:
        """From a signal handler: write last.pt at the next step boundary and stop."""
        self._signal = signum

    def requires_grad_changed(self) -> None:
        """After a callback froze or unfroze parameters (between steps): collect the trainable parameters again and
        rebuild the DDP wrapper, which reduces only the parameters that required gradients when it was built.
        Every backbone parameter is in the optimizer already (see :func:`build.param_groups`); a trainable one that
        is not (an optimizer that picked its own parameters) gets a parameter group of its own."""
        self._add_missing_to_optimizer()
        self._wrap()

    def _wrap(self) -> None:
        """``train_net``: the network, in a DDP wrapper when distributed; ``_params``: its trainable parameters."""
        self._params = [p for p in self.net.parameters() if p.requires_grad]
        if self.dist.distributed and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = None  # the old wrapper's hooks go with it
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.net, device_ids=ids)
        self.train_net = self.ddp if self.ddp is not None else self.net

    def _add_missing_to_optimizer(self) -> None:
        if self.optimizer is None:
            return
        known = {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in known]
        if not missing:
            return
        group = {"params": missing}
        self.optimizer.add_param_group(group)
        new = self.optimizer.param_groups[-1]
        new.setdefault("initial_lr", new["lr"])
        base_lrs = getattr(self.scheduler, "base_lrs", None)
        if isinstance(base_lrs, list) and len(base_lrs) == len(self.optimizer.param_groups) - 1:
            base_lrs.append(new["initial_lr"])
        self.progress.message(f"note: {len(missing)} newly trainable parameter tensor(s) were not in the optimizer; "
                              "they were added as a parameter group of their own")

    # -- the loop --------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from the current state to ``run.epochs`` (or an early stop); returns the last epoch's metrics."""
        if self._rng_to_restore is not None:
            ckpt.set_rng_state(self._rng_to_restore, self.device)
        else:
            ckpt.seed_everything(mix_seed(self.spec.run.seed, self.dist.rank, 3))
        self._call("on_train_start", self)
        try:
            while self.epoch < self.epochs and self.stop_reason is None:
                if self.batch_in_epoch == 0:
                    self._reset_epoch_state()
                    self._call("on_epoch_start", self, self.epoch + 1)
                self._train_epoch()
                self.metrics = self._end_epoch()
        finally:
            self.progress.close()
        if self.stop_reason:
            self.progress.message(f"stopped after epoch {self.epoch}: {self.stop_reason}")
        final = dict(self.history[-1]) if self.history else {}
        if self.swa is not None and self.epoch >= self.swa_start:
            final.update(self._evaluate_swa())
        self._call("on_train_end", self, final)
        self._log_hparams(final)
        return final

    def _train_epoch(self) -> None:
        self.train_net.train()
        n = self.built.batches_per_epoch
        accum = self.spec.trainer.grad_accum
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.progress.start_epoch(self.epoch + 1, n, self.batch_in_epoch)
        self._t_interval = self._t_epoch = time.monotonic()
        for batch in self.train_loader:
            b = self.batch_in_epoch
            self._epoch_skipped += len(batch["skipped"])
            self._skipped_files += batch["skipped"][:max(5 - len(self._skipped_files), 0)]
            images, targets = batch_images(batch, "train"), batch["targets"]
            if isinstance(images, torch.Tensor) and batch["skipped"] and len(images) == 1:  # batch-norm needs two
                images, targets = torch.cat([images, images]), torch.cat([targets, targets])
            group = b - b % accum
            group_size = min(accum, n - group)
            stepping = b == group + group_size - 1
            self._train_step(images, targets, group_size, stepping)
            self.batch_in_epoch = b + 1
            self.progress.advance()
            if stepping:
                self._after_step()
        self._train_time += time.monotonic() - self._t_epoch
        self.progress.end_epoch()

    def _train_step(self, images: torch.Tensor | None, targets: torch.Tensor | None, group_size: int,
                    stepping: bool) -> None:
        """One micro-batch: forward and backward; on the last micro-batch of its group, the optimizer step."""
        placeholder = images is None and self.dist.distributed
        if placeholder:  # every sample skipped (data.on_error = "skip"), but the ranks must reduce gradients together
            images, targets = self._placeholder_batch()
        elif images is not None:
            self._last_batch = (images, targets)
        weight = 0.0 if placeholder else 1.0
        with self._bn_stats_frozen() if placeholder else contextlib.nullcontext():
            if images is not None:
                images = self.model_input(images)  # on the device, normalised (mixup mixes normalised images)
                targets = targets.to(self.device, non_blocking=True)
                if self.mixup is not None and not placeholder:
                    images, targets = self.mixup(images, targets)
                loss = self._forward_backward(images, targets, group_size, sync=stepping, weight=weight)
                if not placeholder:
                    self._record(loss, images.shape[0])
            if not stepping:
                return
            self._unscale_and_clip()
            with self._warmup_lr():
                if not self.built.sam:
                    for opt in self.optimizers:
                        self.scaler.step(opt)
                elif images is not None:  # sharpness-aware: step to the worst point nearby, recompute the gradient
                    self.optimizer.first_step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self._forward_backward(images, targets, 1, sync=True, weight=weight)
                    self._unscale_and_clip()
                    self.optimizer.second_step()
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scheduler is not None and self.built.scheduler_interval == "step":
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.backbone, step=self.global_step)
        self.global_step += 1

    def _placeholder_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What a rank whose whole micro-batch was unreadable feeds the network under DDP / FSDP, with its loss
        weighted 0: its last readable batch (or, before the first one, two black images of class / target 0). The
        rank then joins the gradient reduction with zero gradients instead of leaving the others waiting in it; the
        step's gradient is the other ranks' sum divided by the number of ranks, as DDP always divides."""
        if self._last_batch is not None:
            return self._last_batch
        dtype = torch.float32 if self.spec.run.task == "regression" else torch.long
        return torch.zeros((2, *self.built.input_shape), dtype=torch.uint8), torch.zeros(2, dtype=dtype)

    @contextlib.contextmanager
    def _bn_stats_frozen(self):  # noqa: ANN202
        """Batch-norm running statistics unchanged by a placeholder forward (momentum 0 for its duration)."""
        norms = [m for m in self.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, momentum in zip(norms, saved, strict=True):
                m.momentum = momentum

    def _forward_backward(self, images: torch.Tensor, targets: torch.Tensor, group_size: int,
                          sync: bool, weight: float = 1.0) -> torch.Tensor:
        if self._fsdp_sync is not None:
            self._fsdp_sync.before(self, sync)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with self.autocast():
                _, loss = self.train_net(images, targets)
            scaled = loss / group_size if group_size > 1 else loss
            self.scaler.scale(scaled * weight if weight != 1.0 else scaled).backward()
        return loss.detach()

    def autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _unscale_and_clip(self) -> None:
        t = self.spec.trainer
        if not (t.clip_grad_norm or t.clip_grad_value):
            return
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._params, t.clip_grad_norm)
        if t.clip_grad_value:
            torch.nn.utils.clip_grad_value_(self._params, t.clip_grad_value)

    def warmup_factor(self) -> float:
        w = self.built.warmup_steps
        if not w or self.global_step >= w:
            return 1.0
        start = self.spec.scheduler.warmup_start_factor if self.spec.scheduler else 1.0
        return start + (1.0 - start) * self.global_step / w

    @contextlib.contextmanager
    def _warmup_lr(self):  # noqa: ANN202
        """Linear warmup as a per-step scale of every group's lr, undone after the step (schedulers never see it)."""
        factor = self.warmup_factor()
        if factor == 1.0:
            yield
            return
        saved = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["lr"] * factor
        try:
            yield
        finally:
            for opt, lrs in zip(self.optimizers, saved, strict=True):
                for g, lr in zip(opt.param_groups, lrs, strict=True):
                    g["lr"] = lr

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) * self.warmup_factor()

    # -- loss bookkeeping (on the device; read at log intervals only) ------------------------------------------------
    def _reset_epoch_state(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch_samples = 0
        self._epoch_skipped = 0
        self._skipped_files: list[str] = []  # the first few, for the end-of-epoch message (this rank's)
        self._train_time = 0.0

    def _reset_interval(self) -> None:
        self._interval_losses: list[torch.Tensor] = []
        self._interval_steps: list[int] = []
        self._interval_samples = 0
        self._t_interval = time.monotonic()

    def _record(self, loss: torch.Tensor, n: int) -> None:
        if self.scaler.is_enabled():  # fp16: the scaler skips non-finite steps; average the finite losses
            finite = torch.isfinite(loss)
            self._loss_sum += torch.where(finite, loss, 0.0).double()
            self._loss_count += finite.double()
        else:
            self._loss_sum += loss.double()
            self._loss_count += 1
        self._interval_losses.append(loss)
        self._interval_steps.append(self.global_step + 1)
        self._interval_samples += n
        self._epoch_samples += n

    def _check_interval(self) -> float:
        """Read the interval's losses (a device sync); agree across ranks on NaN and signals. Returns the mean."""
        losses = torch.stack(self._interval_losses).float().cpu() if self._interval_losses else torch.zeros(0)
        finite = torch.isfinite(losses)
        bad = ~finite
        if self.scaler.is_enabled() and bad.any() and not bad.all():
            bad = torch.zeros_like(bad)  # fp16: isolated overflow steps were skipped by the scaler
        bad_step = self._interval_steps[int(bad.nonzero()[0])] if bad.any() else 0
        signal = self._signal or 0
        if self.dist.distributed:
            flags = self.dist.all_reduce(self.dist.collective_tensor([float(signal), float(bad_step)]), op="max")
            signal, bad_step = int(flags[0].item()), int(flags[1].item())
        if signal:
            self._stop_signal = signal
        if bad_step:
            value = losses[bad.nonzero()[0]].item() if bad.any() else float("nan")
            self._fail_non_finite(f"the loss became {value} at step {bad_step}")
        mean = float(losses[finite].mean()) if finite.any() else math.nan
        return mean

    def _fail_non_finite(self, what: str) -> None:
        last = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
        kept = (f" The last good checkpoint is kept: {last} (resume from it with a lower lr, clipping or another "
                "precision)." if last is not None and last.exists() else " No checkpoint had been written yet.")
        raise TrainingFailed(f"{what} (epoch {self.epoch + 1}, batch {self.batch_in_epoch}); training "
                             f"stopped.{kept}")

    def _after_step(self) -> None:
        """After an optimizer step: the log interval, a mid-epoch checkpoint, a pending signal."""
        t = self.spec.trainer
        log = self.global_step % t.log_every_steps == 0
        mid_epoch = self.batch_in_epoch < self.built.batches_per_epoch
        save = bool(t.checkpoint_every_steps) and self.global_step % t.checkpoint_every_steps == 0 and mid_epoch
        if log or save:
            mean = self._check_interval()  # the only device sync; in DDP the ranks agree on signals here
            if log:
                ips = self._interval_samples * self.dist.world_size / max(time.monotonic() - self._t_interval, 1e-9)
                self.progress.log(self.global_step, mean, self.lr(), ips)
                self._reset_interval()
        elif not self.dist.distributed and self._signal:
            self._stop_signal = self._signal
        if mid_epoch and (save or self._stop_signal):
            path = self.save_checkpoint(checked=True)
            if self._stop_signal:
                raise Interrupted(self._stop_signal, path, self.global_step)

    # -- end of epoch ----------------------------------------------------------------------------------------------
    def _end_epoch(self) -> dict[str, float]:
        self._check_interval()
        self._reset_interval()
        e = self.epoch + 1
        totals = self.dist.all_reduce(torch.stack([self._loss_sum, self._loss_count]).to(self.dist.reduce_device))
        loss_sum, loss_count = totals.tolist()
        skipped = self._all_sum(self._epoch_skipped)
        metrics: dict[str, float] = {
            "epoch": e,
            "train/loss": loss_sum / loss_count if loss_count else math.nan,
            "train/lr": self.lr(),
            "train/throughput": self._epoch_samples * self.dist.world_size / max(self._train_time, 1e-9),
            "train/epoch_time": self._train_time,
            "data/skipped": skipped,
        }
        if e % self.spec.trainer.val_every_epochs == 0 or e == self.epochs:
            metrics.update(self.validate())
            if not math.isfinite(metrics.get("val/loss", 0.0)):
                self._fail_non_finite(f"the validation loss is {metrics['val/loss']}")
        if self.swa is not None and e >= self.swa_start:
            self.swa.update_parameters(self.backbone)
        self._step_epoch_scheduler(e, metrics)
        self._call("on_epoch_end", self, e, metrics)
        self.epoch, self.batch_in_epoch = e, 0
        self.history.append(metrics)
        if skipped:
            files = ", ".join(self._skipped_files) + (", ..." if skipped > len(self._skipped_files) else "")
            self.progress.message(f"epoch {e}: skipped {int(skipped)} unreadable sample(s) (data.on_error = \"skip\")"
                                  + (f": {files}" if self._skipped_files else ""))
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), self.global_step)
        self._save_epoch_checkpoints(metrics)
        if self._signal and not self.dist.distributed:
            self._stop_signal = self._signal
        if self._stop_signal and self.epoch < self.epochs:
            raise Interrupted(self._stop_signal, self._ckpt_dir / "last.pt" if self.run_dir else None, self.global_step)
        return metrics

    def _all_sum(self, value: float) -> float:
        if not self.dist.distributed:
            return value
        return float(self.dist.all_reduce(self.dist.collective_tensor([float(value)]))[0].item())

    def validate(self) -> dict[str, float]:
        with fsdp.unsharded(self) if self.sharded else contextlib.nullcontext():
            out, skipped = evaluate_model(self.backbone, self.criterion, self.val_loader, self.val_metrics,
                                          self.model_input, self.autocast, self.dist, "val")
        self._log_visuals("val", self.val_metrics)
        if self.ema is not None:
            ema_out, _ = evaluate_model(self.ema.module, self.criterion, self.val_loader, self.ema_metrics,
                                        self.model_input, self.autocast, self.dist, "val_ema")
            out.update(ema_out)
            self._log_visuals("val_ema", self.ema_metrics)
        if skipped:
            out["data/skipped_val"] = skipped
        return out

    def _log_visuals(self, prefix: str, metrics: dict[str, Any]) -> None:
        """What metrics drew in ``compute()``: ``image()`` (HxWx3 uint8) to each logger's ``log_image`` and
        ``embeddings()`` (``(tensor, labels)``) to ``log_embedding``, tagged ``<prefix>/<metric>`` (rank 0)."""
        for name, m in metrics.items() if self.loggers else ():
            for method, hook in (("image", "log_image"), ("embeddings", "log_embedding")):
                fn = getattr(m, method, None)
                value = fn() if callable(fn) else None
                if value is None:
                    continue
                for logger in self.loggers:
                    log = getattr(logger, hook, None)
                    if callable(log):
                        args = (value,) if method == "image" else tuple(value)
                        log(f"{prefix}/{name}", *args, self.global_step)

    def _evaluate_swa(self) -> dict[str, float]:
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.swa.modules()):
            self._update_swa_bn()
        metrics = {k: m.clone() for k, m in self.val_metrics.items()}
        out, _ = evaluate_model(self.swa.module, self.criterion, self.val_loader, metrics, self.model_input,
                                self.autocast, self.dist, "val_swa")
        self.progress.message("SWA  " + "  ".join(f"{k}={v:.4f}" for k, v in out.items()))
        return out

    @torch.no_grad()
    def _update_swa_bn(self) -> None:
        """Recompute batch-norm statistics of the averaged model over one pass of the training data."""
        bns = [m for m in self.swa.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        self.swa.train()
        self.sampler.set_epoch(self.epochs, 0)
        for batch in self.train_loader:
            if batch["images"] is not None:
                self.swa(self.model_input(batch["images"]))
        self.swa.eval()

    def _step_epoch_scheduler(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.swa_scheduler is not None and epoch >= self.swa_start:
            self.swa_scheduler.step()
            return
        if self.scheduler is None or self.built.scheduler_interval != "epoch":
            return
        import inspect

        if "metrics" in inspect.signature(self.scheduler.step).parameters:  # ReduceLROnPlateau and its kind
            value = metrics.get(self.primary_metric)
            if value is not None and math.isfinite(value):
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    # -- checkpoints -----------------------------------------------------------------------------------------------
    @property
    def _ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def best_key(self) -> str:
        if self.spec.trainer.ema_for_best and self.ema is not None and self.primary_metric.startswith("val/"):
            return "val_ema/" + self.primary_metric.removeprefix("val/")
        return self.primary_metric

    def _better(self, value: float, than: float | None) -> bool:
        if than is None or not math.isfinite(than):
            return True
        return value > than if self.mode == "max" else value < than

    def _save_epoch_checkpoints(self, metrics: dict[str, float]) -> None:
        t = self.spec.trainer
        value = metrics.get(self.best_key)
        is_best = value is not None and math.isfinite(value) and self._better(value, (self.best or {}).get("value"))
        if is_best:
            self.best = {"metric": self.best_key, "value": float(value), "epoch": self.epoch,
                         "global_step": self.global_step}
        epoch_file = None
        pruned: list[str] = []
        if t.checkpoint_every_epochs and self.epoch % t.checkpoint_every_epochs == 0:
            epoch_file = f"epoch-{self.epoch:04d}.pt"
            self.epoch_checkpoints.append([epoch_file, float(value) if value is not None else None])
            if t.keep_top_k:
                worst = -math.inf if self.mode == "max" else math.inf

                def rank(entry: list[Any]) -> float:
                    v = entry[1] if entry[1] is not None and math.isfinite(entry[1]) else worst
                    return -v if self.mode == "max" else v

                ordered = sorted(self.epoch_checkpoints, key=rank)
                pruned = [name for name, _ in ordered[t.keep_top_k:]]
                self.epoch_checkpoints = [e for e in self.epoch_checkpoints if e[0] not in pruned]
        last = self.save_checkpoint(checked=True)
        if self.dist.is_main and last is not None:
            if is_best:
                ckpt.copy_atomic(last, self._ckpt_dir / "best.pt")
            if epoch_file is not None and epoch_file not in pruned:
                ckpt.copy_atomic(last, self._ckpt_dir / epoch_file)
            for name in pruned:
                (self._ckpt_dir / name).unlink(missing_ok=True)

    def save_checkpoint(self, checked: bool = False) -> Path | None:
        """Write ``last.pt`` (rank 0; every rank contributes its RNG state). Never saves a non-finite model."""
        if self.run_dir is None:
            return None
        if not checked:
            self._check_interval()  # no NaN since the last check
        per_rank = self.dist.gather_objects({"rng": ckpt.rng_state(self.device), "epoch_state": self._epoch_state()})
        sharded = fsdp.save_sharded(self) if self.sharded else None  # collective; checks finiteness itself
        if not self.dist.is_main:
            return None
        if sharded is None:
            finite = torch.stack([torch.isfinite(p).all() for p in self.backbone.parameters()]).all()
            if not bool(finite):
                self._fail_non_finite("the model's parameters became non-finite")
        path = self._ckpt_dir / "last.pt"
        state = self.state_dict([r["rng"] for r in per_rank], [r["epoch_state"] for r in per_rank])
        if sharded:
            state.update(sharded)  # the full model and loss; the model and optimizer shards are in sharded["dir"]
        ckpt.check_plain(state)
        ckpt.save_atomic(state, path)
        if sharded or self._stale_shards:
            fsdp.prune(self._ckpt_dir, sharded["sharded"]["dir"] if sharded else "")
            self._stale_shards = False
        return path

    def _epoch_state(self) -> dict[str, Any]:
        """This rank's running sums of the epoch in progress (each rank has its own; all are checkpointed)."""
        return {"loss_sum": self._loss_sum.detach().cpu(), "loss_count": self._loss_count.detach().cpu(),
                "samples": self._epoch_samples, "skipped": self._epoch_skipped, "train_time": self._train_time}

    def state_dict(self, rngs: list[dict[str, Any]] | None = None,
                   epoch_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        from plugtrain import __version__

        epoch_states = epoch_states or [self._epoch_state()]

        b = self.built
        state: dict[str, Any] = {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "plugtrain": __version__,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            # fsdp: the full states come from fsdp.save_sharded, the optimizers' (sharded) from its DCP directory
            "model": self.backbone.state_dict() if not self.sharded else {},
            "loss": self.criterion.state_dict() if not self.sharded else {},
            "frozen": [n for n, p in self._named_parameters() if not p.requires_grad],
            "optimizers": [o.state_dict() for o in self.optimizers] if not self.sharded else [],
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "callbacks": {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)
                          if callable(getattr(cb, "state_dict", None))},
            "rng": rngs or [ckpt.rng_state(self.device)],
            "sampler": {"seed": self.spec.run.seed, "batch_size": self.spec.data.batch_size,
                        "world_size": self.dist.world_size},
            "epoch_state": epoch_states[0],
            "epoch_states": epoch_states,  # per rank: a mid-epoch resume continues every rank's own sums
            "best": self.best,
            "epoch_checkpoints": self.epoch_checkpoints,
            "history": self.history,
            "meta": {
                "class_names": list(b.class_names),
                "in_chans": b.in_chans,
                "num_classes": b.num_classes,
                "task": self.spec.run.task,
                "embedding_dim": b.embedding_dim,
                "input_shape": list(b.input_shape),
                "world_size": self.dist.world_size,
                "best_metric": self.best_key,
                "spec": to_dict(self.spec),
            },
        }
        return state

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``backbone.*`` and ``loss.*`` parameters by name (whatever wraps the backbone)."""
        return [(f"{prefix}.{n}", p) for prefix, module in (("backbone", self.backbone), ("loss", self.criterion))
                for n, p in module.named_parameters()]

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint: every state, the position in the epoch, and (at fit) the RNG states."""
        def fail(what: str, exc: BaseException | None = None) -> PlugtrainError:
            detail = f": {str(exc).strip().splitlines()[0][:300]}" if exc is not None and str(exc).strip() else ""
            return PlugtrainError(f"--resume {source}: {what}{detail} (was the spec changed since the checkpoint?)")

        from_shards = self.sharded or bool(state.get("sharded"))
        if from_shards:  # an fsdp run's model, loss and optimizer states are in the checkpoint's DCP directory
            fsdp.load_sharded(self, state, source)
            self._stale_shards = not self.sharded
        else:
            try:
                self.backbone.load_state_dict(state["model"])
                self.criterion.load_state_dict(state["loss"])
            except (RuntimeError, KeyError) as exc:
                raise fail("the checkpoint's model does not fit this spec's model", exc) from None
        if state.get("frozen") is not None:  # parameters frozen or unfrozen by callbacks stay so
            frozen = set(state["frozen"])
            changed = False
            for name, p in self._named_parameters():
                if p.requires_grad == (name in frozen):
                    p.requires_grad_(name not in frozen)
                    changed = True
            if changed:
                self.requires_grad_changed()
        if not from_shards and len(state["optimizers"]) != len(self.optimizers):
            raise fail(f"the checkpoint has {len(state['optimizers'])} optimizer(s), this spec {len(self.optimizers)}")
        try:
            for opt, sd in zip(self.optimizers, state["optimizers"], strict=True) if not from_shards else ():
                opt.load_state_dict(sd)
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.swa_scheduler is not None and state.get("swa_scheduler") is not None:
                self.swa_scheduler.load_state_dict(state["swa_scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            if self.swa is not None and state.get("swa") is not None:
                self.swa.load_state_dict(state["swa"])
            for key, sd in (state.get("callbacks") or {}).items():
                cb = self.callbacks[int(key)] if int(key) < len(self.callbacks) else None
                if cb is not None and callable(getattr(cb, "load_state_dict", None)):
                    cb.load_state_dict(sd)
        except (RuntimeError, KeyError, ValueError, IndexError) as exc:
            raise fail("cannot restore the training state", exc) from None
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best = state.get("best")
        self.epoch_checkpoints = [list(e) for e in state.get("epoch_checkpoints") or []]
        self.history = list(state.get("history") or [])
        self.metrics = dict(self.history[-1]) if self.history else {}
        self._reset_epoch_state()
        es = self._rank_epoch_state(state)
        if self.batch_in_epoch and es:
            self._loss_sum = es["loss_sum"].to(self.device, torch.float64)
            self._loss_count = es["loss_count"].to(self.device, torch.float64)
            self._epoch_samples, self._epoch_skipped = int(es["samples"]), int(es["skipped"])
            self._train_time = float(es["train_time"])
        old = state.get("sampler") or {}
        old_global = int(old.get("batch_size", 0)) * int(old.get("world_size", 0))
        new_global = self.spec.data.batch_size * self.dist.world_size
        if self.batch_in_epoch and old_global and old_global != new_global:
            self.batch_in_epoch = (self.batch_in_epoch * old_global) // new_global
            self.progress.message(f"note: the global batch changed ({old_global} -> {new_global}); the epoch resumes "
                                  f"at batch {self.batch_in_epoch}, not exactly where it stopped")
        if self.batch_in_epoch >= self.built.batches_per_epoch:
            self.batch_in_epoch = 0
            self.epoch += 1
        rngs = state.get("rng") or []
        if rngs:
            same_world = int((state.get("meta") or {}).get("world_size", 1)) == self.dist.world_size
            self._rng_to_restore = rngs[self.dist.rank] if same_world and self.dist.rank < len(rngs) else None
        self.resumed_from = source

    def _rank_epoch_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's share of the checkpoint's epoch-in-progress sums: its own when the world size is the same;
        otherwise rank 0 takes the totals and the other ranks start from zero (the epoch's totals stay right)."""
        states = state.get("epoch_states") or ([state["epoch_state"]] if state.get("epoch_state") else [])
        if not states:
            return {}
        if len(states) == self.dist.world_size:
            return states[self.dist.rank]
        if self.dist.rank:
            return {}
        return {"loss_sum": sum(e["loss_sum"] for e in states), "loss_count": sum(e["loss_count"] for e in states),
                "samples": sum(int(e["samples"]) for e in states), "skipped": sum(int(e["skipped"]) for e in states),
                "train_time": max(float(e["train_time"]) for e in states)}

    # -- callbacks and loggers -------------------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if callable(fn):
                fn(*args)

    def _log_hparams(self, final: dict[str, float]) -> None:
        hparams = flatten(to_dict(self.spec))
        for logger in self.loggers:
            fn = getattr(logger, "log_hparams", None)
            if callable(fn):
                fn(hparams, {k: v for k, v in final.items() if k != "epoch"})

    def close(self) -> None:
        for logger in self.loggers:
            with contextlib.suppress(Exception):
                logger.close()
        self.loggers = []
        for loader in (getattr(self, "train_loader", None), self.val_loader):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()


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
