"""``plugtrain train SPEC... [--set K=V] [--resume auto|PATH] [--overwrite] [--dry-run]``: a queue of training runs.

For each spec: load it, plan the run directory (:func:`rundir.plan`: nothing a start can lose is removed), build
everything, run the pre-flight (:mod:`~plugtrain.core.runtime.preflight`: one sample of every split, one forward of
model, loss and metrics), then open the run directory (spec.toml, env.json, loggers: a fresh directory is staged and
renamed into place, an overwritten one kept aside until then; undone on failure), print the banner, train with
SIGTERM / SIGINT turned into a checkpoint and a clean stop, print the summary. A failing spec is reported in one
message and the queue goes on; the highest exit code wins; a signal stops the queue.

Exit codes: 0 success; 2 bad input (:class:`PlugtrainError`: spec, data, CLI, checkpoint) — before training with
nothing written; a data fault found while training (``data.on_error = "raise"``) with ``last.pt`` at the last
completed step, to fix and continue with ``--resume auto``; 1 a run that failed while training (:class:`TrainingFailed`,
e.g. a NaN loss) or an unexpected error; 128 + signum (143 / 130) a run stopped by SIGTERM / SIGINT after writing
``last.pt`` (``--resume auto`` continues it exactly).

``dry_run`` builds everything, runs one batch forward and backward, prints shapes and parameter counts and writes
nothing under ``output_dir``: augmented samples (``augmentations.save_samples``) go to a fresh temporary directory
whose path is printed.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import build, distributed, fsdp, preflight, rundir
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.spec import load_spec, to_dict


def _debug() -> bool:
    return os.environ.get("PLUGTRAIN_DEBUG", "") not in ("", "0")


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, resume: str | None = None, overwrite: bool = False,
        dry_run: bool = False) -> int:
    """Train each spec in order; report a failing spec in one message and go on; the highest exit code wins."""
    from plugtrain.core.runtime.trainer import Interrupted

    paths, overrides = list(specs), list(overrides)
    if resume and len(paths) > 1 and resume != "auto":
        raise PlugtrainError("--resume PATH names one checkpoint: give one spec (or use --resume auto)")
    codes: list[int] = []
    try:
        for path in paths:
            label = f"{path}: " if len(paths) > 1 else ""
            try:
                codes.append(train_one(path, overrides, resume, overwrite, dry_run))
            except Interrupted as exc:
                console.echo(_interrupted(exc))
                return 128 + exc.signum
            except PlugtrainError as exc:
                if _debug():
                    traceback.print_exc()
                console.error(label + str(exc).removeprefix("plugtrain: error: "))
                codes.append(exc.exit_code)
            except Exception as exc:  # noqa: BLE001 - a bug or a library error: one line, traceback on demand
                if _debug():
                    traceback.print_exc()
                console.error(f"{label}{type(exc).__name__}: {first_line(exc)} "
                              "(set PLUGTRAIN_DEBUG=1 for the traceback)")
                codes.append(1)
    finally:
        distributed.teardown()
    if len(paths) > 1:
        failed = sum(1 for c in codes if c)
        if failed:
            console.echo(f"{failed} of {len(paths)} specs failed")
    return max(codes, default=0)


def _interrupted(exc: Any) -> str:
    """What a stopped run says: where it stopped and the command that continues it (``--resume auto`` needs a
    ``last.pt``; without one only ``--overwrite`` starts the run again)."""
    name = signal.Signals(exc.signum).name
    if getattr(exc, "at_once", False):
        if exc.checkpoint is None:
            return (f"interrupted by {name} at step {exc.step}, at once, before any checkpoint was written; start "
                    "the run again with --overwrite")
        return (f"interrupted by {name} at step {exc.step}, at once; the last checkpoint is {exc.checkpoint} "
                "(the steps after it are redone): continue with --resume auto")
    where = f"; checkpoint {exc.checkpoint}" if exc.checkpoint else ""
    return f"interrupted by {name} at step {exc.step}{where}; continue with --resume auto"


def configure_torch(spec: Any) -> None:
    """Determinism or speed: ``run.deterministic`` turns on deterministic algorithms, else cudnn.benchmark."""
    import torch

    if spec.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def elastic_restart() -> bool:
    """True in a group that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def train_one(path: str, overrides: Sequence[str] = (), resume: str | None = None, overwrite: bool = False,
              dry_run: bool = False, extra_callbacks: Sequence[Any] = ()) -> int:
    """One spec, as ``plugtrain train`` runs it; ``extra_callbacks`` run after the spec's own (a sweep's pruning
    report, say). Raises what the command reports (PlugtrainError, TrainingFailed, Interrupted)."""
    from plugtrain.core.runtime.progress import Progress
    from plugtrain.core.runtime.trainer import Trainer

    t0 = time.monotonic()
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
        built.callbacks.extend(extra_callbacks)
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
    progress = Progress(spec.run.epochs)
    trainer = Trainer(built, dist, progress=progress)
    try:
        if state is not None:
            restore(trainer, state, plan.checkpoint)
        preflight.run(trainer)
        if dry_run:
            return _dry_run(trainer)
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
    _summary(trainer, final, time.monotonic() - t0)
    return 0


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
    """``trainer.fit()``; a data fault found while training (``data.on_error = "raise"``) is bad input, exit 2, and
    leaves a run that ``--resume auto`` continues once the file is fixed: ``last.pt`` is written at the last completed
    step boundary before the fault (one process; under DDP the last checkpoint written stays)."""
    from plugtrain.core.errors import TrainingFailed

    try:
        return trainer.fit()
    except TrainingFailed:
        raise
    except PlugtrainError as exc:
        split = _data_fault(exc)
        if split is None or trainer.run_dir is None:
            raise
        raise PlugtrainError(f"{exc}. {_keep_resumable(trainer, split)}") from exc


_FAULT = re.compile(r"\((\w+) split; set data\.on_error")


def _data_fault(exc: BaseException) -> str | None:
    """The split of a sample that could not be read, when ``exc`` is such a data fault raised while training."""
    m = _FAULT.search(str(exc))
    if m is None:
        return None
    tb, names = exc.__traceback__, []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    if m.group(1) == "train" and "_train_epoch" in names:
        return "train"
    return m.group(1)


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


def _stopped_at_once(trainer: Any) -> BaseException:
    """The run stopped by a second Ctrl-C, between checkpoints: :class:`Interrupted` naming the ``last.pt`` that
    ``--resume auto`` continues from, or none (then only ``--overwrite`` starts the run again)."""
    from plugtrain.core.runtime.trainer import Interrupted

    last = trainer.run_dir / rundir.CHECKPOINTS / "last.pt" if trainer.run_dir is not None else None
    exc = Interrupted(signal.SIGINT, last if last is not None and last.is_file() else None, trainer.global_step)
    exc.at_once = True
    return exc


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
    )


def _summary(trainer: Any, final: dict[str, float], seconds: float) -> None:
    best = trainer.best
    parts = [f"{trainer.spec.run.name}: done in {seconds:.1f} s"]
    if best:
        parts.append(f"best {best['metric']} = {best['value']:.4f} (epoch {best['epoch']})")
    if trainer.run_dir is not None:
        parts.append(f"run dir {trainer.run_dir}")
    console.echo("; ".join(parts))


@contextlib.contextmanager
def _signals(trainer: Any):  # noqa: ANN202
    """SIGTERM / SIGINT set a flag; the trainer writes last.pt at the next step boundary and stops. A second SIGINT
    interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and trainer._signal is not None:
            raise KeyboardInterrupt
        trainer.handle_signal(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
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


def _save_samples(trainer: Any, where: Path) -> Path:
    from PIL import Image

    b = trainer.built
    spec = b.spec
    grid = sample_grid(b.train_data, spec.augmentations.save_samples)
    path = where / "samples-train.png"
    Image.fromarray(grid).save(path)
    for logger in trainer.loggers:
        fn = getattr(logger, "log_image", None)
        if callable(fn):
            fn("samples/train", grid, 0)
    return path


def _dry_run(trainer: Any) -> int:
    """Build everything, one batch forward and backward, print shapes and parameter counts; nothing in output_dir."""
    b = trainer.built
    spec = b.spec
    if spec.augmentations.save_samples:
        where = Path(tempfile.mkdtemp(prefix="plugtrain-dry-run-"))
        console.echo(f"augmented samples: {_save_samples(trainer, where)}")
    trainer.sampler.set_epoch(0, 0)
    batch = next(iter(trainer.train_loader))
    from plugtrain.core.runtime.step import batch_images

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
    console.table(f"dry run: {spec.run.name} (nothing written)", ["what", "value"], rows)
    return 0


def _outputs(b: Any) -> str:
    """What the model predicts, for the banner: classes, target values (regression) or an embedding."""
    if b.spec.run.task == "regression":
        return f"{b.num_classes} target value(s)"
    if b.spec.run.task == "metric_learning":
        return f"{b.num_classes} classes, {b.embedding_dim}-d embeddings"
    return f"{b.num_classes} classes"
