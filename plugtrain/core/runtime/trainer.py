"""The training loop: epochs of optimizer steps, validation, checkpoints, loggers, callbacks and signals.

The parts, each in its own module: :class:`~.step.TrainStep` (one optimizer step over the micro-batches of an
accumulation group), :class:`~.tracker.LossTracker` (losses on the device, read at log intervals),
:class:`~.evaluator.Evaluator` (validation of the model, its EMA and SWA averages) and
:class:`~.checkpointer.Checkpointer` (``last.pt`` / ``best.pt`` / ``epoch-NNNN.pt`` from the run's stateful parts).

Exact resume: the batch order of an epoch and every sample's augmentation are functions of ``(seed, epoch, index)``
(:mod:`.loader`), so a checkpoint needs only the position in the epoch, the parts' states and the RNG states.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from plugtrain.core.errors import Stopped
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.runtime import fsdp
from plugtrain.core.runtime.build import Built, build_ema, train_sampler
from plugtrain.core.runtime.checkpointer import Callbacks, Checkpointer, NonFinite, Stateful, rank_rng, resume_position
from plugtrain.core.runtime.distributed import DistEnv
from plugtrain.core.runtime.evaluator import Evaluator
from plugtrain.core.runtime.loader import ShardedBatchSampler, make_loader, mix_seed
from plugtrain.core.runtime.precision import autocast
from plugtrain.core.runtime.progress import Progress
from plugtrain.core.runtime.report import Reporter
from plugtrain.core.runtime.step import ModelInput, Network, TrainStep, Warmup, batch_images, train_mode
from plugtrain.core.runtime.stopping import StopSignals, numerical_fault
from plugtrain.core.runtime.swa import SWA
from plugtrain.core.runtime.tracker import LossTracker
from plugtrain.core.runtime.view import CallbackHooks
from plugtrain.core.spec.model import to_dict


class Trainer:
    """Runs a built spec. Callbacks do not see it: each gets a :class:`~.view.RunView` of the run (``_call``)."""

    def __init__(self, built: Built, dist: DistEnv, run_dir: Path | None = None, loggers: list[Any] | None = None,
                 progress: Progress | None = None) -> None:
        spec, t = built.spec, built.spec.trainer
        self.built, self.spec, self.dist, self.device = built, spec, dist, dist.device
        self.epochs, self.primary_metric, self.mode = spec.run.epochs, spec.primary_metric, spec.mode
        self.report = Reporter(progress or Progress(self.epochs, enabled=False), dist, loggers)
        self.callbacks = built.callbacks
        self.sharded = t.strategy == "fsdp" and dist.distributed  # FSDP2: sharded by fsdp.shard before the trainer

        memory_format = torch.channels_last if t.channels_last else torch.preserve_format
        self.backbone = built.backbone.to(self.device, memory_format=memory_format)
        if t.sync_batchnorm and dist.distributed:
            self.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone)
        self.criterion = built.criterion.to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if self.scaler.is_enabled():  # a step the scaler skips (inf gradients) still advances the schedule, by design
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        self.ema = build_ema(self.backbone, t.ema_decay) if t.ema else None
        if t.compile and self.device.type != "cuda":  # inductor on CPU: "No CUDA runtime is found" is not news
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self.net = Network(torch.compile(self.backbone) if t.compile else self.backbone, self.criterion)
        self.optimizer = built.optimizer
        self.optimizers = [o for o in (built.optimizer, built.loss_optimizer) if o is not None]
        self.scheduler = built.scheduler
        self.swa = SWA(self.backbone, self.optimizer, t.swa_lr, t.swa_start_epoch, self.epochs,
                       t.swa_anneal_epochs) if t.swa else None
        self.model_input = ModelInput.for_spec(spec, built.in_chans, self.device, memory_format)
        self.step = _train_step(self)

        self.sampler, self.train_loader, self.val_loader = _loaders(built, dist)
        unsharded = (lambda: fsdp.unsharded(self.backbone, self.criterion)) if self.sharded else contextlib.nullcontext
        self.evaluator = Evaluator(self.criterion, self.val_loader, built.metrics, self.model_input, self.autocast,
                                   dist, ema=self.ema, unsharded=unsharded)

        self.tracker = LossTracker(self.device, fp16=self.scaler.is_enabled())
        self.checkpointer = _checkpointer(self, run_dir)

        self.epoch = 0  # epochs completed; the epoch in progress is self.epoch (0-based)
        self.batch_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.metrics: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.resumed_from: Path | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self.signals = StopSignals()
        self._logged = False  # a step was logged in this process
        self.hooks = CallbackHooks(self, self.callbacks)

    # -- for callbacks and commands --------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.backbone

    @property
    def loggers(self) -> list[Any]:
        return self.report.loggers

    @loggers.setter
    def loggers(self, value: list[Any]) -> None:
        self.report.loggers = value

    @property
    def run_dir(self) -> Path | None:
        return self.checkpointer.run_dir

    @run_dir.setter
    def run_dir(self, value: Path | None) -> None:
        self.checkpointer.run_dir = value

    @property
    def best(self) -> dict[str, Any] | None:
        return self.checkpointer.best

    def autocast(self) -> Any:
        return autocast(self.device.type, self.spec.trainer.precision)

    def request_stop(self, reason: str) -> None:
        """Stop after the current epoch (its checkpoints are still written)."""
        self.stop_reason = reason

    def handle_signal(self, signum: int) -> None:
        """From a signal handler: write last.pt at the next step boundary and stop."""
        self.signals.received = signum

    @property
    def signal_received(self) -> int | None:
        """The stopping signal this process received (:meth:`handle_signal`), or ``None``."""
        return self.signals.received

    def requires_grad_changed(self) -> None:
        """After a callback froze or unfroze parameters (between steps): rebuild the DDP wrapper; a trainable
        parameter that no optimizer holds gets a parameter group of its own."""
        added = self.step.add_missing_params(self.backbone, self.scheduler) if self.optimizer is not None else 0
        if added:
            self.report.message(f"note: {added} newly trainable parameter tensor(s) were not in the optimizer; "
                                  "they were added as a parameter group of their own")
        self.step.distribute(ddp=self.dist.distributed and not self.sharded)

    # -- the loop --------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from the current state to ``run.epochs`` (or an early stop); returns the last epoch's metrics."""
        if self._rng_to_restore is not None:
            ckpt.set_rng_state(self._rng_to_restore, self.device)
        else:
            ckpt.seed_everything(mix_seed(self.spec.run.seed, self.dist.rank, 3))
        _note_start_weights(self)
        self.hooks.check()  # a callback reaching outside its view is refused before the first step
        self._call("on_train_start")
        try:
            while self.epoch < self.epochs and self.stop_reason is None:
                if self.batch_in_epoch == 0:
                    self.tracker.reset_epoch()
                    self._call("on_epoch_start", self.epoch + 1)
                self._train_epoch()
                self.metrics = self._end_epoch()
        finally:
            self.report.progress.close()
        if self.stop_reason:
            self.report.message(f"stopped after epoch {self.epoch}: {self.stop_reason}")
        final = dict(self.history[-1]) if self.history else {}
        if self.swa is not None and self.swa.active(self.epoch):
            final.update(self._finish_swa())
        self._call("on_train_end", final)
        self.report.hparams(self.spec, final)
        return final

    def _finish_swa(self) -> dict[str, float]:
        """``val_swa/*`` of the SWA average, its batch-norm statistics recomputed: logged with the last epoch's
        metrics, and ``last.pt`` saved again so that its ``swa`` weights are the ones evaluated."""
        swa = self.evaluator.evaluate_swa(self.swa.model, self.train_loader, self.sampler, self.epochs)
        if self.history:
            self.history[-1].update(swa)
        self.report.epoch({"epoch": self.epoch, **swa}, self.global_step)
        self.save_checkpoint(checked=True)
        return swa

    def _train_epoch(self) -> None:
        """Collect the micro-batches of each accumulation group; one optimizer step per group."""
        train_mode(self.step.net, self.backbone)
        n, accum = self.built.batches_per_epoch, self.spec.trainer.grad_accum
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.report.progress.start_epoch(self.epoch + 1, n, self.batch_in_epoch)
        tr = self.tracker
        tr.interval_start = t_epoch = waited = time.monotonic()
        group: list[Any] = []
        for batch in self.train_loader:
            t_batch = time.monotonic()
            tr.data_time += t_batch - waited
            b = self.batch_in_epoch
            tr.skip(batch["skipped"])
            group.append(self.step.micro_batch(batch_images(batch, "train"), batch["targets"], bool(batch["skipped"])))
            self.batch_in_epoch = b + 1
            self.report.progress.advance()
            start = b - b % accum
            if b == start + min(accum, n - start) - 1:  # the group's last micro-batch
                log = (self.global_step + 1) % self.spec.trainer.log_every_steps == 0 or not self._logged
                for loss, samples in self.step.step(group, self.global_step, measure=log):
                    tr.record(loss, samples, self.global_step + 1)
                self.global_step += 1
                tr.steps += 1
                group = []
                self._after_step(log)
            waited = time.monotonic()
            tr.compute_time += waited - t_batch
        tr.train_time += time.monotonic() - t_epoch
        loss_sum, count = self._check_interval()
        if count:  # the bar shows the epoch's last values even when it is shorter than a log interval
            self.report.progress.show(loss_sum / count, self.step.current_lrs(self.global_step)[0],
                                      tr.interval_throughput(self.dist.world_size))
        self.report.progress.end_epoch()

    def _after_step(self, log: bool) -> None:
        """After an optimizer step: the log interval (also the first step: values at once), a mid-epoch checkpoint,
        a pending signal."""
        t = self.spec.trainer
        mid_epoch = self.batch_in_epoch < self.built.batches_per_epoch
        save = bool(t.checkpoint_every_steps) and self.global_step % t.checkpoint_every_steps == 0 and mid_epoch
        if log or save:
            loss_sum, count = self._check_interval()  # the only device sync; the ranks agree on signals here
            if log:
                self.report.step(self.global_step, loss_sum, count, self.step.current_lrs(self.global_step),
                                 self.step.grad_norm, self.tracker.interval_throughput(self.dist.world_size))
                self.step.grad_norm, self._logged = None, True
                self.tracker.reset_interval()
        else:
            self.signals.take_local(self.dist.distributed)
        if mid_epoch and (save or self.signals.agreed):
            path = self.save_checkpoint(checked=True)
            if self.signals.agreed:
                raise Stopped(self.signals.agreed, path, self.global_step)

    def _check_interval(self) -> tuple[float, int]:
        """Read the interval's losses; agree across ranks on a non-finite loss and on signals. Returns this rank's
        sum of the interval's losses and their number."""
        loss_sum, count, bad_step, value = self.tracker.read_interval()
        bad_step = self.signals.agree(self.dist, bad_step)
        if bad_step:
            self._fail_non_finite(f"the loss became {value} at step {bad_step}", bad_step)
        return loss_sum, count

    def _fail_non_finite(self, what: str, step: int | None = None) -> None:
        raise numerical_fault(what, self.run_dir, self.epoch, self.batch_in_epoch,
                              self.global_step if step is None else step)

    def _end_epoch(self) -> dict[str, float]:
        self.tracker.reset_interval()
        e = self.epoch + 1
        metrics = self.tracker.epoch_row(e, self.step.current_lrs(self.global_step), self.dist, self.device)
        skipped = metrics["data/skipped"]
        self.report.data_hint(e, metrics)
        if e % self.spec.trainer.val_every_epochs == 0 or e == self.epochs:
            metrics.update(self.evaluator.validate(self.backbone, self.loggers, self.global_step))
            if not math.isfinite(metrics.get("val/loss", 0.0)):
                self._fail_non_finite(f"the validation loss is {metrics['val/loss']}")
        if self.swa is not None and self.swa.active(e):
            self.swa.model.update_parameters(self.backbone)
        if self.swa is not None and self.swa.scheduler is not None and self.swa.active(e):
            self.swa.scheduler.step()
        elif self.built.scheduler_interval == "epoch":
            step_epoch_scheduler(self.scheduler, metrics.get(self.primary_metric))
        self._call("on_epoch_end", e, metrics)
        self.epoch, self.batch_in_epoch = e, 0
        self.history.append(metrics)
        if skipped:
            self.report.message(self.tracker.skipped_message(e, skipped))
        self.report.epoch(metrics, self.global_step)
        try:
            self.checkpointer.save_epoch(self._progress_state(), metrics, self.epoch)
        except NonFinite as exc:
            self._fail_non_finite(str(exc))
        self.signals.take_local(self.dist.distributed)
        if self.signals.agreed and self.epoch < self.epochs:
            last = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
            raise Stopped(self.signals.agreed, last, self.global_step)
        return metrics

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save_checkpoint(self, checked: bool = False) -> Path | None:
        """Write ``last.pt`` (rank 0; every rank contributes its RNG state). Never saves a non-finite model."""
        if self.run_dir is None:
            return None
        if not checked:
            self._check_interval()  # no NaN since the last check
        try:
            return self.checkpointer.save(self._progress_state())
        except NonFinite as exc:
            self._fail_non_finite(str(exc))

    def _progress_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "history": self.history, "sampler": {"seed": self.spec.run.seed, "batch_size": self.spec.data.batch_size,
                                                     "world_size": self.dist.world_size}}

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": ckpt.rng_state(self.device), "epoch_state": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint: every part's state, the position in the epoch, and (at fit) the RNG states."""
        self.checkpointer.load(state, source)
        self.history = list(state.get("history") or [])
        self.metrics = dict(self.history[-1]) if self.history else {}
        self.global_step = int(state["global_step"])
        self.epoch, self.batch_in_epoch, note = resume_position(state, self.spec.data.batch_size * self.dist.world_size,
                                                                self.built.batches_per_epoch)
        if note:
            self.report.message(note)
        self.tracker.resume(state, self.dist.rank, self.dist.world_size)
        self._rng_to_restore = rank_rng(state, self.dist.rank, self.dist.world_size)
        self.resumed_from = source

    # -- callbacks and loggers -------------------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback that has it, with the callback's own :class:`~.view.RunView` first."""
        self.hooks.call(hook, *args)

    def close(self) -> None:
        self.report.close()
        for loader in (getattr(self, "train_loader", None), self.val_loader):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()


class _Frozen:
    """The checkpoint's ``frozen`` part: the names of parameters that callbacks froze; restoring them rebuilds the
    training wrapper when anything changed."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def _named(self) -> list[tuple[str, torch.nn.Parameter]]:
        t = self.trainer
        return [(f"{prefix}.{n}", p) for prefix, module in (("backbone", t.backbone), ("loss", t.criterion))
                for n, p in module.named_parameters()]

    def state_dict(self) -> list[str]:
        return [n for n, p in self._named() if not p.requires_grad]

    def load_state_dict(self, names: list[str]) -> None:
        frozen, changed = set(names), False
        for name, p in self._named():
            if p.requires_grad == (name in frozen):
                p.requires_grad_(name not in frozen)
                changed = True
        if changed:
            self.trainer.requires_grad_changed()


def _note_start_weights(t: Trainer) -> None:
    """A fresh run: record the weights the backbone started from in env.json and say them in one line."""
    from plugtrain.core.runtime import rundir

    if t.run_dir is None or not t.dist.is_main or t.global_step:
        return
    start = rundir.record_start_weights(t.run_dir, t.built.backbone)
    if start and start.get("summary"):
        t.report.message(f"start weights: {start['summary']}")


def _train_step(t: Trainer) -> TrainStep:
    """The run's optimizer step around the trainer's network, optimizers and averages."""
    b, spec = t.built, t.spec
    start = spec.scheduler.warmup_start_factor if spec.scheduler else 1.0
    step = TrainStep(t.net, t.optimizers, scaler=t.scaler, precision=spec.trainer.precision, device=t.device,
                     model_input=t.model_input, warmup=Warmup(b.warmup_steps, start),
                     clip_grad_norm=spec.trainer.clip_grad_norm, clip_grad_value=spec.trainer.clip_grad_value,
                     sam=b.sam, mixup=b.mixup, ema=t.ema, ema_model=t.backbone,
                     scheduler=t.scheduler if b.scheduler_interval == "step" else None,
                     sync=fsdp.ForwardSync(t.backbone, t.criterion) if t.sharded else None,
                     placeholder=_placeholder(b) if t.dist.distributed else None)
    step.distribute(ddp=t.dist.distributed and not t.sharded)
    return step


def _checkpointer(t: Trainer, run_dir: Path | None) -> Checkpointer:
    """The trainer's stateful parts by checkpoint key; best.pt follows the EMA's metric with ``ema_for_best``."""
    best_key = t.primary_metric
    if t.spec.trainer.ema_for_best and t.ema is not None and best_key.startswith("val/"):
        best_key = "val_ema/" + best_key.removeprefix("val/")
    states = {"model": t.backbone, "loss": t.criterion, "frozen": _Frozen(t), "optimizers": Stateful(t.optimizers),
              "scheduler": t.scheduler, "swa_scheduler": t.swa.scheduler if t.swa else None, "scaler": t.scaler,
              "ema": t.ema, "swa": t.swa.model if t.swa else None, "callbacks": Callbacks(t.callbacks)}
    return Checkpointer(run_dir, t.dist, states, mode=t.mode, best_key=best_key,
                        every_epochs=t.spec.trainer.checkpoint_every_epochs, keep_top_k=t.spec.trainer.keep_top_k,
                        sharded=t.sharded, rank_state=t._rank_state, meta=_meta(t.built, t.dist))


def step_epoch_scheduler(scheduler: Any, value: float | None) -> None:
    """A per-epoch scheduler's step; one that takes ``metrics`` (ReduceLROnPlateau) gets the primary metric's value
    and skips an epoch without a finite one."""
    if scheduler is None:
        return
    if "metrics" not in inspect.signature(scheduler.step).parameters:
        scheduler.step()
    elif value is not None and math.isfinite(value):
        scheduler.step(value)


def _loaders(built: Built, dist: DistEnv) -> tuple[Any, Any, Any]:
    """The train sampler and loader (none for an evaluation) and the validation loader (each rank its share)."""
    d, seed = built.spec.data, built.spec.run.seed
    pin = d.pin_memory if d.pin_memory is not None else dist.device.type == "cuda"
    args = dict(num_workers=d.num_workers, on_error=d.on_error, pin_memory=pin,
                persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor)
    sampler = train_sampler(built, dist) if built.optimizer is not None else None
    train = make_loader(built.train_data, sampler, seed=mix_seed(seed, 1), **args) if sampler is not None else None
    val_sampler = ShardedBatchSampler(len(built.val_data), d.val_batch_size or d.batch_size, dist.rank,
                                      dist.world_size)
    return sampler, train, make_loader(built.val_data, val_sampler, seed=mix_seed(seed, 2), **args)


def _placeholder(built: Built) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Two black images and the task's target of a black image: a rank's placeholder before it has read any batch."""
    task = built.spec.task_object
    target = task.placeholder_target(tuple(built.input_shape))
    return torch.zeros((2, *built.input_shape), dtype=torch.uint8), task.collate([target, target]), True


def _meta(built: Built, dist: DistEnv) -> dict[str, Any]:
    """What a checkpoint says about its run, for evaluate / predict / export without the data."""
    return {"class_names": list(built.class_names), "in_chans": built.in_chans, "num_classes": built.num_classes,
            "task": built.spec.run.task, "embedding_dim": built.embedding_dim, "input_shape": list(built.input_shape),
            "world_size": dist.world_size, "spec": to_dict(built.spec)}
