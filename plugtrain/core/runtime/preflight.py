"""The pre-flight of ``plugtrain train``: what could fail on the first real data, tried before the run directory exists.

:func:`run` takes a built :class:`~plugtrain.core.runtime.trainer.Trainer` (everything built, nothing written) and

* reads one real sample of each split through its pipeline (decoding, the augmentations, the resize), so that an
  unreadable first file or a pipeline that cannot process the images (a crop larger than the images) is bad input
  now, not after the first epoch;
* runs one forward of the model, the loss and every metric's ``update`` / ``compute`` on a tiny batch of validation
  samples, so that a loss or a metric that does not fit the model's outputs (a class weight per class of another
  dataset, a metric of another task) is bad input now, not at the first step or the first validation.

Nothing of the run changes: the model runs in eval mode without gradients (batch-norm statistics untouched), the
metrics are copies whose ``compute`` does not synchronise across processes, the augmentations are seeded per sample,
and :meth:`Trainer.fit` seeds (or restores) every generator afterwards. Every failure is one
:class:`~plugtrain.core.errors.PlugtrainError` (exit 2) naming the spec section.
"""

from __future__ import annotations

from typing import Any

from plugtrain.core.errors import PlugtrainError, first_line

#: How many samples of a split are tried before giving up on finding a readable one (on_error = "skip").
TRIES = 16
#: The size of the batch the model, the loss and the metrics are tried on.
BATCH = 4


def run(trainer: Any) -> None:
    """Try one sample of every split and one forward of model, loss and metrics (see the module docstring)."""
    from plugtrain.core.runtime import pixelfit

    built = trainer.built
    pixelfit.check(built)  # one dtype and channel count in the files; transforms that can take them
    items = {}
    for split, data in (("train", built.train_data), ("val", built.val_data), ("test", built.test_data)):
        if data is not None:
            items[split] = first_samples(data, split, built.spec.data.on_error, 1 if split != "val" else BATCH)
    if getattr(trainer, "sharded", False):
        return  # an FSDP model's forward is collective: the build's dummy forward has run before sharding
    forward(trainer, items["val"])


def first_samples(data: Any, split: str, on_error: str, count: int) -> list[Any]:
    """Up to ``count`` readable samples of ``data`` from its first :data:`TRIES` (at least one, or an error)."""
    from plugtrain.core.runtime.loader import Failed

    where = "augmentations.val" if split == "test" else f"augmentations.{split}"
    out: list[Any] = []
    first_failure = None
    for i in range(min(len(data), TRIES)):
        try:
            item = data[(0, i)]
        except PlugtrainError:
            raise
        except Exception as exc:  # the pipeline (not the file): every sample would fail the same way
            raise PlugtrainError(f"[{where}] the {split} pipeline fails on the split's sample #{i}: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from exc
        if isinstance(item, Failed):
            if not (item.skippable and on_error == "skip"):
                hint = '; set data.on_error = "skip" to skip such samples' if item.skippable else ""
                raise PlugtrainError(f"{item.path}: {item.reason} ({split} split, checked before training{hint})")
            first_failure = first_failure or item
            continue
        out.append(item)
        if len(out) >= count:
            break
    if not out and len(data):
        what = f"; the first: {first_failure.path}: {first_failure.reason}" if first_failure else ""
        raise PlugtrainError(f"[data] none of the first {min(len(data), TRIES)} samples of the {split} split could "
                             f"be read{what}")
    return out


def pipeline_error(exc: BaseException) -> PlugtrainError | None:
    """``exc`` as bad input when a split's augmentation pipeline raised it (while the build read its first samples:
    :func:`plugtrain.core.runtime.build.sample_shape`), else None."""
    tb = exc.__traceback__
    split = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_augment" and frame.f_globals.get("__name__") == "plugtrain.core.runtime.loader":
            split = getattr(frame.f_locals.get("self"), "name", None)
        tb = tb.tb_next
    if split is None:
        return None
    where = "augmentations.val" if split == "test" else f"augmentations.{split}"
    return PlugtrainError(f"[{where}] the {split} pipeline fails on the split's first samples: "
                          f"{type(exc).__name__}: {first_line(exc)}")


def forward(trainer: Any, samples: list[Any]) -> None:
    """One forward of the model, the loss and every metric on ``samples`` (validation samples)."""
    import torch

    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import loss_of

    if not samples:
        return
    built, spec = trainer.built, trainer.spec
    batch = Collate("raise", getattr(built.val_data, "task", None))(samples)  # the task collates its targets
    images = trainer.model_input(batch["images"])
    targets = batch["targets"].to(trainer.device)
    model, criterion = trainer.backbone, trainer.criterion
    was_training, loss_training = model.training, criterion.training
    model.eval()
    criterion.eval()
    try:
        with torch.no_grad():
            try:
                with trainer.autocast():
                    outputs = model(images)
            except Exception as exc:
                raise PlugtrainError(f"[backbone] {spec.backbone.name!r} fails on a batch of shape "
                                     f"{tuple(images.shape)}: {type(exc).__name__}: {first_line(exc)}") from exc
            outputs = (outputs[0] if isinstance(outputs, (tuple, list)) else outputs).float()
            try:
                with trainer.autocast():  # a loss given the inputs runs a model on them (see step.loss_of)
                    loss = loss_of(criterion, outputs, targets, images).float()
                loss = loss if loss.ndim == 0 else loss.mean()
            except Exception as exc:
                raise PlugtrainError(
                    f"[loss] {spec.loss.name!r} fails on the model's outputs {tuple(outputs.shape)} and the targets "
                    f"{tuple(targets.shape)} ({str(targets.dtype).removeprefix('torch.')}): {type(exc).__name__}: "
                    f"{first_line(exc)}") from exc
            preds = outputs.squeeze(-1) if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1 else outputs
            for name, metric in built.metrics.items():
                _try_metric(name, metric, preds, targets)
    finally:
        model.train(was_training)
        criterion.train(loss_training)
    if not bool(torch.isfinite(loss.detach()).all()):
        raise PlugtrainError(f"[loss] {spec.loss.name!r} is {float(loss)} on the first validation batch, before any "
                             "training: check [augmentations] mean / std and the loss's parameters")


def _try_metric(name: str, metric: Any, preds: Any, targets: Any) -> None:
    import copy
    import warnings

    try:
        trial = copy.deepcopy(metric)  # the run's metric stays as it is
        if hasattr(trial, "_to_sync"):  # torchmetrics: no collective in a pre-flight
            trial._to_sync = False
        if hasattr(trial, "sync_on_compute"):
            trial.sync_on_compute = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a tiny batch makes some metrics warn (too few samples)
            trial.update(preds, targets)
            trial.compute()
    except Exception as exc:
        raise PlugtrainError(f"[metrics] metric {name!r} fails on the model's outputs {tuple(preds.shape)} and the "
                             f"targets {tuple(targets.shape)}: {type(exc).__name__}: {first_line(exc)}") from exc
