"""The training engine: one call, :func:`run`, behind ``plugtrain train``, :func:`plugtrain.train`, a sweep's trial
and a cross-validation fold; it returns what happened as a :class:`RunResult` and raises what stopped it as a typed
exception.

For a spec: load it, plan the run directory (:func:`rundir.plan`: nothing a start can lose is removed), build
everything, restore a checkpoint, run the pre-flight (:mod:`~plugtrain.core.runtime.preflight`: one sample of every
split, one forward of model, loss and metrics), then open the run directory (spec.toml, env.json, loggers: a fresh
directory is staged and renamed into place, an overwritten one kept aside until then; undone on failure), print the
banner, train with SIGTERM / SIGINT / SIGUSR1 turned into a checkpoint and a clean stop, print the one-line summary.

What it raises (each says what happened; the callers choose exit codes and messages by type, never by text):
:class:`~plugtrain.core.errors.PlugtrainError` bad input before training, nothing written (exit 2);
:class:`~plugtrain.core.errors.DataFault` a sample that could not be read while training (exit 2; ``last.pt`` at
the last completed step, to fix and continue with ``--resume auto``); :class:`~plugtrain.core.errors.NumericalFault`
/ :class:`~plugtrain.core.errors.TrainingFailed` a run that failed while training (exit 1);
:class:`~plugtrain.core.errors.Stopped` a run stopped by a stop signal (128 + signum). Anything else is a bug or
a library's error.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core import console
from plugtrain.core.errors import DataFault, PlugtrainError, Stopped, first_line
from plugtrain.core.runtime import build, distributed, fsdp, preflight, rundir
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.runtime.compare import is_better
from plugtrain.core.spec import load_spec, to_dict


@attrs.frozen
class RunResult:
    """What a run did: ``metrics`` of the final epoch (``val_swa/*`` included), ``best`` (``{metric, value, epoch,
    global_step}`` of ``best.pt``, or ``None``), ``run_dir``, ``history`` (every epoch's metrics), ``epochs``
    completed, ``stop_reason`` (a callback's :meth:`~.trainer.Trainer.request_stop`: early stopping, pruning),
    ``seconds``, ``exit_reason`` (``"completed"``, ``"stopped early"`` or ``"dry run"``) and ``exit_code`` (0).
    A dry run has ``dry_run`` (rows of what was built) and ``samples`` (the augmented samples' image, if asked for);
    a cross-validation fold has ``fold = (k, K)``."""

    metrics: dict[str, float]
    best: dict[str, Any] | None
    run_dir: Path | None
    history: list[dict[str, float]]
    name: str = ""
    epochs: int = 0
    stop_reason: str | None = None
    seconds: float = 0.0
    exit_reason: str = "completed"
    exit_code: int = 0
    fold: tuple[int, int] | None = None
    dry_run: list[tuple[str, str]] | None = None
    samples: Path | None = None

    def best_row(self, metric: str, mode: str) -> tuple[int, dict[str, float]] | None:
        """``(epoch, metrics row)`` of the epoch where ``metric`` was best by ``mode`` (the first of equals), or
        ``None`` when no epoch reported a finite value."""
        best: tuple[int, dict[str, float]] | None = None
        for row in self.history:
            value = row.get(metric)
            if isinstance(value, (int, float)) and is_better(value, best[1][metric] if best else None, mode):
                best = (int(row.get("epoch", 0)), row)
        return best

    def summary(self) -> str:
        """The line a finished run prints: its time, best metric and run directory."""
        parts = [f"{self.name}: done in {self.seconds:.1f} s"]
        if self.best:
            parts.append(f"best {self.best['metric']} = {self.best['value']:.4f} (epoch {self.best['epoch']})")
        if self.run_dir is not None:
            parts.append(f"run dir {self.run_dir}")
        return "; ".join(parts)


def run(path: str, overrides: Sequence[str] = (), *, resume: str | None = None, overwrite: bool = False,
        dry_run: bool = False, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train the spec at ``path`` with ``overrides`` (``--set`` texts); ``callbacks`` run after the spec's own (a
    sweep's pruning report, say). ``dry_run`` builds everything and runs one batch forward and backward, writing
    nothing under ``output_dir``. Raises what stopped the run (see the module)."""
    from plugtrain.core.runtime.progress import Progress
    from plugtrain.core.runtime.trainer import Trainer

    t0 = time.monotonic()
    stop_signals()  # a bad PLUGTRAIN_STOP_SIGNALS is bad input, found before anything is written
    spec = load_spec(path, list(overrides))
    run_dir = rundir.run_dir_for(spec.run.output_dir, spec.run.name)
    restarted = not dry_run and elastic_restart()
    if restarted:  # an elastic restart continues from the group's last checkpoint by itself
        overwrite = False  # the first start already replaced the old run
        if resume is None or (run_dir / rundir.CHECKPOINTS / "last.pt").is_file():
            resume = "auto"
    plan = None if dry_run else rundir.plan(run_dir, resume, overwrite, elastic_restart=restarted)
    state = ckpt.load(plan.checkpoint, purpose="resume") if plan is not None and plan.checkpoint is not None \
        else None
    dist = distributed.setup(spec.trainer.device, spec.trainer.backend)
    changes = rundir.check_resume_spec(plan, state, to_dict(spec), dist.world_size, f"--resume {resume}") \
        if state is not None else None
    configure_torch(spec)
    build.check_loggers(spec)
    try:
        built = build.build_run(spec, dist)
        built.callbacks.extend(callbacks)
    except PlugtrainError:
        raise
    except Exception as exc:  # the build reads samples: a pipeline that cannot process them is bad input
        bad = preflight.pipeline_error(exc)
        if bad is None:
            raise
        raise bad from exc
    if state is not None:
        fits = ckpt.fit_problem(state, built.backbone)
        if fits:
            raise PlugtrainError(f"--resume {plan.checkpoint}: {fits} of {spec.source or 'the spec'} (was the spec "
                                 "changed since the checkpoint?)")
    if spec.trainer.strategy == "fsdp":
        if dist.distributed:
            fsdp.shard(built, dist)
        elif not dry_run:
            console.echo('note: strategy = "fsdp" with one process: training unsharded')
    trainer = Trainer(built, dist, progress=Progress(spec.run.epochs))
    try:
        if state is not None:
            restore(trainer, state, plan.checkpoint)
        preflight.run(trainer)
        if dry_run:
            return _dry_run(trainer, t0)
        for note in [*spec.notes, plan.note]:
            if note:
                console.echo(f"note: {note}")
        _open_run_dir(trainer, plan, spec, state, changes)
        try:
            _banner(trainer, plan)
            _report_data_problems(built)
            with _signals(trainer):
                final = fit(trainer)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once; say what continues it
            raise _stopped_at_once(trainer) from None
    finally:
        trainer.close()
    result = RunResult(metrics=final, best=dict(trainer.best) if trainer.best else None, run_dir=trainer.run_dir,
                       history=[dict(h) for h in trainer.history], name=spec.run.name, epochs=int(trainer.epoch),
                       stop_reason=trainer.stop_reason, seconds=time.monotonic() - t0,
                       exit_reason="stopped early" if trainer.stop_reason else "completed")
    console.echo(result.summary())
    return result


def configure_torch(spec: Any) -> None:
    """Determinism or speed: ``run.deterministic`` turns on deterministic algorithms, else cudnn.benchmark."""
    import torch

    if spec.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        if torch.are_deterministic_algorithms_enabled() or "torch._inductor.config" in sys.modules:
            torch.use_deterministic_algorithms(False)  # it imports torch._inductor (seconds): only to undo a True
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def elastic_restart() -> bool:
    """True in a group that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def restore(trainer: Any, state: dict[str, Any], source: Path) -> None:
    """``trainer.load_state_dict``: a checkpoint that does not fit is bad input (exit 2), never a traceback."""
    try:
        trainer.load_state_dict(state, source)
    except PlugtrainError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise PlugtrainError(f"--resume {source}: cannot restore the training state from it: "
                             f"{type(exc).__name__}: {first_line(exc)} (was the spec changed since the "
                             "checkpoint?)") from None


def fit(trainer: Any) -> dict[str, float]:
    """``trainer.fit()``; a :class:`DataFault` while training leaves a run that ``--resume auto`` continues once the
    file is fixed: ``last.pt`` is written at the last completed step boundary before the fault (one process; under
    DDP the last checkpoint written stays), and the fault raised again says so."""
    try:
        return trainer.fit()
    except DataFault as fault:
        if trainer.run_dir is None:
            raise
        raise DataFault(fault.file, fault.reason, fault.split, _keep_resumable(trainer, fault.split)) from fault


def _keep_resumable(trainer: Any, split: str) -> str:
    """Write ``last.pt`` at the last completed step boundary (a fault in the training data, one process) and say how
    to go on."""
    last = trainer.run_dir / rundir.CHECKPOINTS / "last.pt"
    fix = 'fix it (or set data.on_error = "skip")'
    if split == "train" and not trainer.dist.distributed:
        accum = trainer.spec.trainer.grad_accum
        trainer.batch_in_epoch -= trainer.batch_in_epoch % accum  # the micro-batches of an unfinished step redo
        try:
            saved = trainer.save_checkpoint()
        except PlugtrainError:
            saved = None
        if saved is not None:
            return (f"Training stopped at step {trainer.global_step} (epoch {trainer.epoch + 1}, batch "
                    f"{trainer.batch_in_epoch}); {saved} holds that step: {fix} and continue with --resume auto")
    if last.is_file():
        return f"Training stopped; the last checkpoint is {last}: {fix} and continue with --resume auto"
    return f"Training stopped before any checkpoint: {fix} and start the run again with --overwrite"


def _stopped_at_once(trainer: Any) -> Stopped:
    """The run stopped by a second Ctrl-C, between checkpoints: :class:`Stopped` ``at_once``, naming the ``last.pt``
    that ``--resume auto`` continues from, or none (then only ``--overwrite`` starts the run again)."""
    last = trainer.run_dir / rundir.CHECKPOINTS / "last.pt" if trainer.run_dir is not None else None
    return Stopped(signal.SIGINT, last if last is not None and last.is_file() else None, trainer.global_step,
                   at_once=True)


def _open_run_dir(trainer: Any, plan: rundir.Plan, spec: Any, state: dict[str, Any] | None = None,
                  changes: dict[str, Any] | None = None) -> None:
    """Create the run directory (rank 0), write spec.toml and env.json, build the loggers; undo on failure.

    A fresh directory is written under a temporary sibling name and renamed into place whole; with ``--overwrite``
    the old run is renamed aside meanwhile and deleted only once the loggers are built (:class:`rundir.Opening`):
    a failure up to then puts it back untouched. Other ranks wait at the barriers. On a resume, rank 0 first cleans
    up after a process that was killed while saving: temporary files of dead processes are removed and ``best.pt`` /
    ``epoch-NNNN.pt`` re-linked when they missed the last save."""
    dist = trainer.dist
    opening = None
    dist.barrier()  # every rank has planned against the same directory state
    try:
        spec_dict = to_dict(spec)
        if dist.is_main:
            opening = rundir.Opening(plan)
            if plan.mode == "resume" and not plan.fresh:
                _repair_after_crash(plan, state)
            spec_file = opening.write_spec(spec_dict, changes)
            env = rundir.environment(dist.world_size, spec.source)
            rundir.write_env(opening.where, env, plan.checkpoint if plan.mode == "resume" else None, spec_file,
                             changes)
            opening.publish()
        trainer.run_dir = plan.run_dir
        if dist.is_main:
            trainer.loggers = build.build_loggers(spec, plan.run_dir, dist.rank, spec_dict)
            if spec.augmentations.save_samples and plan.mode != "resume":
                _save_samples(trainer, plan.run_dir)
        dist.barrier()
        if opening is not None:
            opening.commit()
    except BaseException:
        trainer.close()
        trainer.run_dir = None
        if opening is not None:
            opening.rollback()
        raise


def _repair_after_crash(plan: rundir.Plan, state: dict[str, Any] | None) -> None:
    ckpt_dir = plan.run_dir / rundir.CHECKPOINTS
    removed = ckpt.remove_stale_temporaries(ckpt_dir) + ckpt.remove_stale_temporaries(plan.run_dir)
    if removed:
        console.echo(f"note: removed {len(removed)} partial checkpoint file(s) left by an interrupted save: "
                     + ", ".join(removed))
    last = ckpt_dir / "last.pt"
    if state is not None and plan.checkpoint is not None and last.is_file() and Path(plan.checkpoint).is_file() \
            and os.path.samefile(plan.checkpoint, last):
        repaired = ckpt.repair_copies(last, state)
        if repaired:
            console.echo(f"note: {', '.join(repaired)} missed the last save before the interruption; re-linked to "
                         "last.pt")


def _report_data_problems(built: Any) -> None:
    """What the dataset dropped or noticed while indexing (``on_error = "skip"``): never silent."""
    splits = built.splits
    shown = 0
    for name in ("train", "val", "test"):
        split = getattr(splits, name, None)
        if split is None:
            continue
        skipped = int(getattr(split, "skipped", 0) or 0)
        problems = list(getattr(split, "problems", None) or [])
        if skipped:
            console.echo(f"data: {name} split: {skipped} sample(s) skipped while indexing (data.on_error = \"skip\")")
        for where, what in problems:
            if shown < 20:
                console.echo(f"data: {name} split: {where}: {what}")
            shown += 1
    if shown > 20:
        console.echo(f"data: ... and {shown - 20} more problem(s)")


def _banner(trainer: Any, plan: rundir.Plan) -> None:
    b, d = trainer.built, trainer.dist
    spec = b.spec
    what = f"resuming from {plan.checkpoint} at epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}" \
        if plan.mode == "resume" else "starting"
    params = sum(p.numel() for p in b.backbone.parameters())
    console.echo(
        f"{spec.run.name}: {what}; {len(b.train_data)} train / {len(b.val_data)} val samples, "
        f"{_outputs(b)}; {spec.backbone.name} {params / 1e6:.2f}M params; {d.world_size} process(es) on "
        f"{d.device}; {b.batches_per_epoch} batches x {spec.run.epochs} epochs; run dir {plan.run_dir}"
        + (f"; train samples per class: {class_counts_text(b)}" if b.class_counts is not None else "")
    )


#: The environment variable naming further stop signals (``USR2``, ``SIGHUP``; comma- or space-separated): a
#: scheduler's warning before a time limit (``plugtrain submit --signal``) is one.
STOP_SIGNALS_ENV = "PLUGTRAIN_STOP_SIGNALS"
_held: list[int] = []  # stop signals received before training began (hold_stop_signals)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run at the next step boundary with last.pt: SIGTERM, SIGINT, SIGUSR1 (the usual
    warning before a batch system's time limit) and those named in ``PLUGTRAIN_STOP_SIGNALS``."""
    found = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]
    for name in os.environ.get(STOP_SIGNALS_ENV, "").replace(",", " ").split():
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        if key not in signal.Signals.__members__ or key in ("SIGKILL", "SIGSTOP"):
            raise PlugtrainError(f"{STOP_SIGNALS_ENV}={os.environ[STOP_SIGNALS_ENV]!r}: {name!r} is not a signal "
                                 "that can be caught (e.g. USR1, USR2, TERM)")
        if signal.Signals[key] not in found:
            found.append(signal.Signals[key])
    return tuple(found)


def hold_stop_signals() -> None:
    """From now until training begins, a stop signal is kept rather than killing the process; the run then stops
    at its first step boundary (a launcher's warning or preemption may come while the run is being built)."""
    if threading.current_thread() is threading.main_thread():
        for s in stop_signals():
            signal.signal(s, lambda signum, frame: _held.append(signum))


@contextlib.contextmanager
def _signals(trainer: Any):  # noqa: ANN202
    """The stop signals (:func:`stop_signals`) set a flag; the trainer writes last.pt at the next step boundary and
    stops. A second SIGINT interrupts at once. A signal held since :func:`hold_stop_signals` counts as received."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and trainer.signal_received is not None:
            raise KeyboardInterrupt
        trainer.handle_signal(signum)

    old = {s: signal.signal(s, handler) for s in stop_signals()}
    if _held:
        trainer.handle_signal(_held[0])
        _held.clear()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- samples and dry run -----------------------------------------------------------------------------------------------
def sample_grid(dataset: Any, count: int) -> Any:
    """An ``HxWx3`` uint8 grid of the first ``count`` augmented training samples (epoch 0's augmentations), drawn from
    the raw pixel values the dataset yields (normalisation happens later, per batch on the device)."""
    import numpy as np

    from plugtrain.core.runtime.loader import Failed

    tiles = []
    for i in range(min(count, len(dataset))):
        item = dataset[(0, i)]
        if isinstance(item, Failed):
            continue
        image = item[0][0] if isinstance(item[0], list) else item[0]
        if hasattr(image, "detach"):  # a CHW tensor
            x = image.detach().cpu().numpy().transpose(1, 2, 0)
        else:  # an HWC array (normalize = false: no to-tensor step)
            x = np.atleast_3d(np.asarray(image))
        x = x if x.dtype == np.uint8 else np.clip(x, 0, 255).astype(np.uint8)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        tiles.append(x[..., :3])
    if not tiles:
        raise PlugtrainError("[augmentations] save_samples: no training sample could be read")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    pad = 2
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x0 = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + t.shape[0], x0:x0 + t.shape[1]] = t
    return grid


def write_png(path: Path, rgb: Any) -> None:
    """An ``HxWx3`` uint8 array as an 8-bit RGB PNG, with the standard library alone (core names no image
    library): one IDAT chunk of unfiltered rows."""
    import struct
    import zlib

    h, w = rgb.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def _save_samples(trainer: Any, where: Path) -> Path:
    b = trainer.built
    spec = b.spec
    grid = sample_grid(b.train_data, spec.augmentations.save_samples)
    path = where / "samples-train.png"
    write_png(path, grid)
    for logger in trainer.loggers:
        fn = getattr(logger, "log_image", None)
        if callable(fn):
            fn("samples/train", grid, 0)
    return path


def _dry_run(trainer: Any, t0: float) -> RunResult:
    """One batch forward and backward: the shapes and parameter counts as rows of :attr:`RunResult.dry_run`;
    nothing in output_dir (augmented samples go to a fresh temporary directory)."""
    b = trainer.built
    spec = b.spec
    samples = None
    if spec.augmentations.save_samples:
        samples = _save_samples(trainer, Path(tempfile.mkdtemp(prefix="plugtrain-dry-run-")))
    from plugtrain.core.runtime.step import batch_images

    trainer.sampler.set_epoch(0, 0)
    batch = next(iter(trainer.train_loader))
    images = batch_images(batch, "train")
    if images is None:
        raise PlugtrainError("[data] every sample of the first batch was skipped")
    targets = batch["targets"].to(trainer.device)
    images = trainer.model_input(images)
    trainer.step.net.train()
    with trainer.autocast():
        outputs, loss = trainer.step.net(images, targets)
    trainer.scaler.scale(loss).backward()
    grads = sum(1 for p in trainer.step.params if p.grad is not None)
    for opt in trainer.optimizers:
        opt.zero_grad(set_to_none=True)

    def count(module: Any) -> tuple[int, int]:
        ps = list(module.parameters())
        return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)

    bt, btr = count(b.backbone)
    lt, _ = count(b.criterion)
    rows = [
        ("dataset", f"{spec.data.dataset.name}: {len(b.train_data)} train, {len(b.val_data)} val"
                    + (f", {len(b.test_data)} test" if b.test_data is not None else "")
                    + f"; {_outputs(b)}; {b.in_chans} channel(s)"),
        *([("classes", f"train samples per class: {class_counts_text(b)}")] if b.class_counts is not None else []),
        ("batch", f"images {tuple(images.shape)} {images.dtype}, targets {tuple(targets.shape)} {targets.dtype}"),
        ("backbone", f"{spec.backbone.name}: {bt:,} parameters ({btr:,} trainable); output "
                     f"{tuple(outputs.shape)}; embedding_dim {b.embedding_dim}"),
        ("loss", f"{spec.loss.name}: {float(loss.detach()):.4f}; {lt:,} parameters"),
        ("optimizer", f"{spec.optimizer.name}: {len(b.optimizer.param_groups)} param group(s); "
                      f"{grads} tensors got gradients" + (" (SAM: two passes per step)" if b.sam else "")),
        ("scheduler", f"{spec.scheduler.name} per {b.scheduler_interval}, warmup {b.warmup_steps} step(s)"
                      if spec.scheduler else "none"),
        ("steps", f"{b.batches_per_epoch} batches / {b.steps_per_epoch} optimizer steps per epoch on "
                  f"{trainer.dist.world_size} process(es), device {trainer.device}"),
        ("trainer", f"precision {spec.trainer.precision}, compile {spec.trainer.compile}, channels_last "
                    f"{spec.trainer.channels_last}, strategy {spec.trainer.strategy}, grad_accum {spec.trainer.grad_accum}"),
        ("metrics", ", ".join(f"val/{k}" for k in b.metrics) + f"; primary {spec.primary_metric} ({spec.mode})"),
    ]
    return RunResult(metrics={}, best=None, run_dir=None, history=[], name=spec.run.name,
                     seconds=time.monotonic() - t0, exit_reason="dry run", dry_run=rows, samples=samples)


def class_counts_text(b: Any) -> str:
    """``name count, ...`` of the train split's classes (the range only, over 20 classes), with the sampler and loss
    weighting that act on them."""
    counts = b.class_counts
    if len(counts) <= 20:
        text = ", ".join(f"{name} {n}" for name, n in zip(b.class_names, counts, strict=True))
    else:
        text = f"{min(counts)} to {max(counts)} over {len(counts)} classes"
    if b.class_counts and min(b.class_counts) > 0:
        text += f" (max/min {max(b.class_counts) / min(b.class_counts):.1f})"
    spec = b.spec
    if spec.data.sampler == "weighted":
        text += "; sampler weighted" + (" by data.class_weights" if spec.data.class_weights else " (1/count)")
    if isinstance(spec.loss.params.get("weight"), list) and len(counts) <= 20:
        text += "; loss weight " + ", ".join(f"{w:g}" for w in spec.loss.params["weight"])
    return text


def _outputs(b: Any) -> str:
    """What the model predicts, for the banner, as its task says."""
    return b.spec.task_object.describe_outputs(b.num_classes, b.embedding_dim)
