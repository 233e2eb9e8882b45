"""The hook specifications of plugtrain: one hook per component kind.

Every component plugtrain can use — a backbone, a loss, an optimizer, a scheduler, an augmentation, a logger, a
dataset, a metric, a callback — comes from a plugin that implements one of the hooks below. Built-in components are
plugins like any other: they live in :mod:`plugtrain.plugins` and are found through the ``plugtrain`` entry-point
group, exactly as a third-party package's are.

A plugin is a module named by an entry point::

    [project.entry-points.plugtrain]
    my_plugin = "my_package.plugtrain_plugin"

and implements any subset of the hooks with the :data:`hookimpl` marker::

    from plugtrain import Component, hookimpl

    @hookimpl
    def plugtrain_losses():
        return [Component("Focal", focal_loss, summary="Focal loss for imbalanced classification.")]

When hooks are called
---------------------
Each hook is called **lazily, at most once per process**, the first time a component of its kind is listed, shown,
checked or built. Listing losses therefore never imports timm, and listing backbones never imports albumentations:
keep heavy imports inside the hook (or inside the factory), never at the top of a plugin module.

Every hook is called with no arguments and returns an iterable of :class:`plugtrain.Component`. The component's
``kind`` is filled in by plugtrain from the hook that returned it. A hook that raises is reported with its plugin's
name and the other plugins' components of that kind are still available.

How factories are called
------------------------
A component's ``factory`` is called with the parameters the user wrote in the run spec as keyword arguments, plus
the *context* arguments that the runtime supplies for that kind (listed per hook below, and in :data:`CONTEXT`).
A context argument is passed only when the factory's signature names it (or takes ``**kwargs``); context arguments
are never shown as user parameters and cannot be set from a spec. Parameter checking, ``plugtrain show`` and the JSON
Schema are all derived from the factory's signature, so annotate parameters and give defaults.
"""

from __future__ import annotations

import pluggy

PROJECT = "plugtrain"
ENTRY_POINT_GROUP = "plugtrain"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The component kinds, in the order plugtrain lists them.
KINDS: tuple[str, ...] = (
    "backbones",
    "losses",
    "optimizers",
    "schedulers",
    "augmentations",
    "loggers",
    "datasets",
    "metrics",
    "callbacks",
)

#: Arguments the runtime supplies to a factory of each kind (never set by a spec).
CONTEXT: dict[str, frozenset[str]] = {
    "backbones": frozenset({"num_classes"}),
    "losses": frozenset({"num_classes", "embedding_dim"}),
    "optimizers": frozenset({"params", "model"}),
    "schedulers": frozenset({"optimizer", "epochs", "steps_per_epoch", "total_steps"}),
    "augmentations": frozenset(),
    "loggers": frozenset({"run_dir", "spec", "rank"}),
    "datasets": frozenset({"seed", "on_error", "image_size"}),
    "metrics": frozenset({"num_classes", "task"}),
    "callbacks": frozenset(),
}


#: The singular of each kind, for messages ("unknown loss 'x'").
SINGULAR: dict[str, str] = {k: ("loss" if k == "losses" else k[:-1]) for k in KINDS}


def hook_name(kind: str) -> str:
    """The name of the hook that provides components of ``kind``."""
    return f"plugtrain_{kind}"


@hookspec
def plugtrain_backbones():
    """Return the backbones (feature extractors / classifiers) this plugin provides.

    Called: lazily, once, the first time backbones are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.nn.Module`` that maps a batch
    of images ``(N, C, H, W)`` to logits ``(N, num_classes)`` or, when ``num_classes`` is 0, to features or embeddings.

    Context: ``num_classes`` (int; 0 asks for a model without a classifier head).
    """


@hookspec
def plugtrain_losses():
    """Return the loss functions this plugin provides.

    Called: lazily, once, the first time losses are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.nn.Module`` called as
    ``loss(outputs, targets)`` that returns a scalar tensor. A loss that owns parameters (class centres, say) exposes
    them through ``parameters()``; the runtime trains them.

    Context: ``num_classes`` (int), ``embedding_dim`` (int; the width of the backbone's output).
    """


@hookspec
def plugtrain_optimizers():
    """Return the optimizers this plugin provides.

    Called: lazily, once, the first time optimizers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.optim.Optimizer``.
    An optimizer with ``first_step()`` and ``second_step()`` (SAM) gets two forward/backward passes per step.

    Context: ``params`` (an iterable of parameters or parameter-group dicts), ``model`` (the ``nn.Module``).
    """


@hookspec
def plugtrain_schedulers():
    """Return the learning-rate schedulers this plugin provides.

    Called: lazily, once, the first time schedulers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.optim.lr_scheduler``
    scheduler (anything with ``step()``, ``state_dict()`` and ``load_state_dict()``).

    Context: ``optimizer``, ``epochs`` (int), ``steps_per_epoch`` (optimizer steps per epoch), ``total_steps``.
    """


@hookspec
def plugtrain_augmentations():
    """Return the image augmentations this plugin provides.

    Called: lazily, once, the first time augmentations are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns an albumentations-compatible transform
    (callable as ``t(image=array)`` returning a dict with ``"image"``). A composition takes a ``transforms`` parameter:
    the runtime builds the nested specs first and passes the built transforms.
    """


@hookspec
def plugtrain_loggers():
    """Return the experiment loggers this plugin provides.

    Called: lazily, once, the first time loggers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns an object with
    ``log_metrics(metrics: dict[str, float], step: int)`` and ``close()``; it may also have
    ``log_hparams(hparams: dict, metrics: dict)``, ``log_image(tag, image, step)`` (HWC uint8 array) and
    ``log_text(text)``. Only rank 0 builds loggers.

    Context: ``run_dir`` (pathlib.Path of the run directory), ``spec`` (the resolved spec as a plain dict),
    ``rank`` (int).
    """


@hookspec
def plugtrain_datasets():
    """Return the datasets this plugin provides.

    Called: lazily, once, the first time datasets are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a
    :class:`plugtrain.core.data.DatasetSplits`: the train/val (and optionally test) sequences of
    ``(image, target)`` samples with the image an ``HxWxC`` uint8 numpy array, plus the class names.

    Context: ``seed`` (int; use it for any random split so that runs are reproducible), ``on_error`` (``"raise"``
    or ``"skip"``: what to do with a bad sample found while indexing), ``image_size`` (int or None).

    A sample that cannot be used raises :class:`plugtrain.core.data.SampleError` (from ``__getitem__`` or while
    indexing); the runtime names the file, or skips and counts it, as ``data.on_error`` says.
    """


@hookspec
def plugtrain_metrics():
    """Return the evaluation metrics this plugin provides.

    Called: lazily, once, the first time metrics are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torchmetrics.Metric`` (updated
    with ``(preds, targets)``, reduced across ranks by torchmetrics).

    Context: ``num_classes`` (int), ``task`` (``"classification"``, ``"regression"`` or ``"metric_learning"``).
    """


@hookspec
def plugtrain_callbacks():
    """Return the training callbacks this plugin provides.

    Called: lazily, once, the first time callbacks are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns an object with any of the methods
    ``on_train_start(trainer)``, ``on_epoch_start(trainer, epoch)``, ``on_epoch_end(trainer, epoch, metrics)`` and
    ``on_train_end(trainer, metrics)``; missing methods are skipped.
    """
