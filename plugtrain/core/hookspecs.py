"""The hook specifications of plugtrain: one hook per component kind.

Every component plugtrain can use — a backbone, a loss, an optimizer, a scheduler, an augmentation, a logger, a
dataset, a metric, a callback, a task — comes from a plugin that implements one of the hooks below. Built-in components are
plugins like any other: they live in :mod:`plugtrain.plugins` and are found through the ``plugtrain`` entry-point
group, exactly as a third-party package's are. One more hook, :func:`plugtrain_commands`, lets a plugin add
subcommands to the ``plugtrain`` command line.

A plugin is a module named by an entry point::

    [project.entry-points.plugtrain]
    my_plugin = "my_package.plugtrain_plugin"

and implements any subset of the hooks with the :data:`hookimpl` marker::

    from plugtrain import Component, hookimpl

    @hookimpl
    def plugtrain_losses():
        return [Component("Focal", focal_loss, summary="Focal loss for imbalanced classes.")]

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

Roles
-----
Core never names a component. Where the runtime needs "the thing that does X" it asks the registry for the component
that claims the role X (``Component(name, factory, summary, roles=("resize",))``; :data:`ROLES`):

=============  ====================  =================================================  ===============================
kind           role                  the factory is called as / returns                 when
=============  ====================  =================================================  ===============================
augmentations  ``resize``            ``factory(height=, width=)`` -> a transform        appended to each split's pipeline
                                                                                        (``augmentations.resize``)
augmentations  ``compose``           ``factory(transforms, seed=)`` -> the pipeline     every pipeline that is not empty
augmentations  ``batch_mix``         ``factory(num_classes=, mixup_alpha=,              a spec with ``[mixup]``
                                     cutmix_alpha=, prob=, switch_prob=, mode=,
                                     label_smoothing=)`` -> ``mix(images, targets)
                                     -> (images, targets)`` on whole batches
callbacks      ``ema``               ``factory(model=, decay=)`` -> an object with      ``trainer.ema = true``, and
                                     ``.module``, ``update(model, step=)``,             evaluating a checkpoint that
                                     ``state_dict()``, ``load_state_dict()``            holds an EMA
loggers        ``metrics_csv``       the logger that writes ``metrics.csv``             added to every run that lacks it
optimizers     ``layer_decay``       ``factory(model=, layer_decay=, weight_decay=,     ``optimizer.layer_decay``
                                     no_decay_norm_bias=)`` -> parameter groups, each
                                     with an ``lr_scale``
loggers        ``default``           (many) the loggers of a spec without               loading a spec
                                     ``[[loggers]]``, in registration order
metrics        ``default:<task>``    (many) more metrics of a spec without              building a run of ``<task>``
                                     ``[[metrics]]``, after the task's own
                                     ``default_metrics``, in registration order
metrics        ``always:<task>``     (many) metrics added first to a ``<task>`` run     building a run of ``<task>``
                                     whose ``[[metrics]]`` lack them (after the
                                     task's ``required_metrics``)
tasks          ``default``           the task of a spec without ``run.task``            loading a spec
=============  ====================  =================================================  ===============================

A role core needs exactly one of must have exactly one claimant: none, or two (built-in or not), is an error naming
them, and ``PLUGTRAIN_DISABLE_PLUGINS`` is the way to drop the one not wanted. A role marked *many* gathers every
claimant. The roles of :data:`RUNTIME_ROLES` make their component a part of the runtime rather than something a spec
names: it is left out of ``plugtrain list``, the JSON Schema and spec lookups (a spec cannot list the ``[mixup]``
implementation as a per-sample augmentation by mistake).

Plugin-module attributes
------------------------
Besides its hooks, a plugin module may define:

* ``PLUGTRAIN_RETIRED``: ``{kind: {"Name" | "Name.param" | "*.param": hint}}``, hints for names and parameters a
  library removed (:mod:`plugtrain.core.spec.retired`).
* ``PLUGTRAIN_VALIDATE``: ``validate(factory, params, defaults[, context]) -> [(key or None, message, is_warning),
  ...]``, the plugin's own check of one of its components' parameters (``params`` as the spec gives them,
  ``defaults`` the factory's defaults), run by ``plugtrain check`` once the signature checks pass. A problem with a
  key points at that key; ``None`` points at the component's table. A check with a parameter named ``context`` (or
  ``**kwargs``) also gets a :class:`plugtrain.core.runtime.rundir.CheckContext`: ``context.queued_runs`` and
  ``context.written_by_queue(path)`` (a file a spec queued before this one writes, ``plugtrain check A B``), and
  ``context.start_inputs_needed`` (False where the files only the start of training reads, start weights, are not
  needed: a finished run reopened, ``weights fetch``). A three-parameter check is called as before.
* ``PLUGTRAIN_VALIDATE_PURE``: ``True`` when ``PLUGTRAIN_VALIDATE``'s answer depends only on the component and its
  parameters (given the installed libraries) and it takes no ``context``: the component catalog then stores its
  verdicts by parameters, and ``check`` imports neither the plugin nor its library for a verdict it has.
* ``PLUGTRAIN_PRETRAINED``: ``tags(factory) -> [(tag, weights reference), ...]``, a backbone's pretrained weights
  (the default first; ``[]`` for none), listed by ``plugtrain list backbones --pretrained``.
* ``PLUGTRAIN_FETCH``: ``needs(factory, params) -> [plugtrain.hub.HubFiles | plugtrain.hub.LocalFile, ...]``, what a
  backbone needs downloaded before training (hub repository files); ``plugtrain weights fetch`` fills the Hugging
  Face cache with it, naming no plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from plugtrain.core.runtime.view import RunView

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
    "tasks",
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
    "metrics": frozenset({"num_classes", "task", "task_params", "class_names"}),
    "callbacks": frozenset(),
    "tasks": frozenset(),
}


#: The roles core looks up, by ``(kind, role)``: what the role is for (see "Roles" above). ``<task>`` stands for the
#: name of each registered task (``plugtrain list tasks``); a role not listed here is still found by its claimants.
ROLES: dict[tuple[str, str], str] = {
    # factory(height=, width=); signals and volumes (data.image_size a list of 1 or 3 numbers) use the roles
    # "resize:1d" / "resize:3d", factory(spatial_size=[...]), and "compose:1d" / "compose:3d", claimed by a plugin
    ("augmentations", "resize"): "the transform that resizes every image to data.image_size",
    ("augmentations", "compose"): "the composition that makes a pipeline of the transforms",
    ("augmentations", "batch_mix"): "the implementation of [mixup]",
    ("callbacks", "ema"): "the model EMA of trainer.ema",
    ("loggers", "metrics_csv"): "the logger that writes metrics.csv",
    ("optimizers", "layer_decay"): "the parameter groups of optimizer.layer_decay",
    ("loggers", "default"): "the loggers of a spec without [[loggers]]",
    ("tasks", "default"): "the task of a spec without run.task",
}

#: Roles whose component is a part of the runtime, not something a spec names (left out of listings and lookups).
RUNTIME_ROLES: frozenset[tuple[str, str]] = frozenset({("augmentations", "batch_mix"), ("callbacks", "ema"),
                                                       ("optimizers", "layer_decay")})


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
    of images ``(N, C, H, W)`` to logits ``(N, num_classes)`` or, when ``num_classes`` is 0, to features or embeddings
    (contract: :class:`Backbone`).

    Context: ``num_classes`` (int; 0 asks for a model without a classifier head).

    A ``pretrained`` parameter, by convention, names the weights the model starts from: a finished run's backbone is
    rebuilt without it (its weights come from its checkpoint), and a plugin's check of those weights reads
    ``context.start_inputs_needed`` first (see ``PLUGTRAIN_VALIDATE`` above).
    """


@hookspec
def plugtrain_losses():
    """Return the loss functions this plugin provides.

    Called: lazily, once, the first time losses are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.nn.Module`` called as
    ``loss(outputs, targets)`` that returns a scalar tensor. A loss that owns parameters (class centres, say) exposes
    them through ``parameters()``; the runtime trains them (contract: :class:`Loss`).

    Context: ``num_classes`` (int), ``embedding_dim`` (int; the width of the backbone's output).
    """


@hookspec
def plugtrain_optimizers():
    """Return the optimizers this plugin provides.

    Called: lazily, once, the first time optimizers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.optim.Optimizer``
    (contract: :class:`Optimizer`).
    An optimizer with ``first_step()`` and ``second_step()`` (SAM) gets two forward/backward passes per step.

    Context: ``params`` (an iterable of parameters or parameter-group dicts), ``model`` (the ``nn.Module``).
    """


@hookspec
def plugtrain_schedulers():
    """Return the learning-rate schedulers this plugin provides.

    Called: lazily, once, the first time schedulers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a ``torch.optim.lr_scheduler``
    scheduler (anything with ``step()``, ``state_dict()`` and ``load_state_dict()``; contract: :class:`Scheduler`).

    Context: ``optimizer``, ``epochs`` (int), ``steps_per_epoch`` (optimizer steps per epoch), ``total_steps``.
    """


@hookspec
def plugtrain_augmentations():
    """Return the image augmentations this plugin provides.

    Called: lazily, once, the first time augmentations are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns an albumentations-compatible transform
    (callable as ``t(image=array)`` returning a dict with ``"image"``). A composition takes a ``transforms`` parameter:
    the runtime builds the nested specs first and passes the built transforms (contract: :class:`Augmentation`).
    """


@hookspec
def plugtrain_loggers():
    """Return the experiment loggers this plugin provides.

    Called: lazily, once, the first time loggers are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a :class:`Logger`. Only rank 0 builds
    loggers, after the run directory (with ``spec.toml`` and ``env.json``) exists.

    Context: ``run_dir`` (pathlib.Path of the run directory), ``spec`` (the resolved spec as a plain dict),
    ``rank`` (int).
    """


@hookspec
def plugtrain_datasets():
    """Return the datasets this plugin provides.

    Called: lazily, once, the first time datasets are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a
    :class:`plugtrain.core.data.DatasetSplits`: the train/val (and optionally test) sequences of
    ``(image, target)`` samples with the image an ``HxWxC`` numpy array, plus the class names (contract:
    :class:`Dataset`, each split a :class:`DatasetSplit`). The image is uint8, or, for a dataset whose ``pixels``
    parameter is ``"raw"`` (its split's ``pixels`` attribute says so), as stored: uint16 or float32; the run divides
    it by ``augmentations.scale`` (resolved from that dtype) before ``mean`` and ``std``.

    Context: ``seed`` (int; use it for any random split so that runs are reproducible), ``on_error`` (``"raise"``
    or ``"skip"``: what to do with a bad sample found while indexing), ``image_size`` (int or None).

    A sample that cannot be used raises :class:`plugtrain.core.data.SampleError` (from ``__getitem__`` or while
    indexing); the runtime names the file, or skips and counts it, as ``data.on_error`` says.

    A factory may carry a ``read_image`` attribute, used by ``plugtrain predict`` on image files:
    ``read_image(path, *, in_chans, params) -> HxWxC array`` (the samples' dtype) reads one file exactly as the
    dataset's own samples come out before the augmentation pipeline (same decoder, channels, dtype and size
    handling). ``in_chans`` is the channel count of the run's samples, ``params`` the dataset's parameters from the
    spec (``spec.data.dataset.params``; defaults apply to what it leaves out). A missing file, a directory or a file
    that is not a readable image raises :class:`plugtrain.core.errors.PlugtrainError` with one line naming the path.
    """


@hookspec
def plugtrain_metrics():
    """Return the evaluation metrics this plugin provides.

    Called: lazily, once, the first time metrics are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a :class:`Metric` (a
    ``torchmetrics.Metric`` is one: updated with ``(preds, targets)``, reduced across ranks by torchmetrics).

    Context: ``num_classes`` (int), ``task`` (the name of the run's task, ``run.task``), ``task_params`` (a dict: the
    task's parameters, its factory's defaults updated by the spec's ``[task]`` table), ``class_names`` (the dataset's,
    in label order: what a drawn metric labels its axes with).
    """


@hookspec
def plugtrain_callbacks():
    """Return the training callbacks this plugin provides.

    Called: lazily, once, the first time callbacks are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a :class:`Callback`: an object with
    any of its methods (missing ones are skipped).
    """


@hookspec
def plugtrain_tasks():
    """Return the tasks (the shape of the problem: what is predicted from an image) this plugin provides.

    Called: lazily, once, the first time tasks are listed, shown, checked or built.

    Returns: an iterable of :class:`plugtrain.Component`. Each factory returns a :class:`Task`: everything about a
    run that depends on what is predicted (targets, head, outputs, defaults, prediction, export). ``run.task`` names
    the component; the spec's ``[task]`` table (optional) gives the factory's parameters, every one of which has a
    default. A factory is cheap (no heavy imports): ``plugtrain check`` builds it to learn what the model outputs.
    """


#: The hook through which plugins add CLI subcommands (not a component kind).
COMMANDS_HOOK = "plugtrain_commands"


@hookspec
def plugtrain_commands():
    """Return the subcommands this plugin adds to the ``plugtrain`` command line (as datasette's ``register_commands``).

    Called: once, when the command line may need them: ``plugtrain --help`` (and a bare or unknown command), or a
    command that is not built in. A built-in command never calls it, so a plugin's commands cost the others nothing.

    Returns: an iterable of :class:`plugtrain.Command`::

        Command("hello", run, help="say hello", arguments=add_arguments)

    ``arguments(parser)`` (optional) adds the command's arguments to its ``argparse`` parser; ``run(args)`` gets the
    parsed ``argparse.Namespace`` and returns the exit code (``None`` is 0). A :class:`plugtrain.PlugtrainError` from
    ``run`` is one line on stderr and exit code 2, as for a built-in command. ``plugtrain --help`` lists the command
    with its help and its plugin's name.

    Names are lowercase (``[a-z][a-z0-9_-]*``). A name of a built-in command, or one an earlier plugin (by
    entry-point name) already added, is refused with a warning naming both (``PLUGTRAIN_STRICT_PLUGINS``: an error),
    and the built-in (or the first) is kept.
    """


# -- what each kind's factory returns ---------------------------------------------------------------------------------
# One Protocol per kind, :data:`CONTRACTS` says which of its members are required. Checked when the component is built
# (plugtrain.core.runtime.build.component): a required member missing, or a method that cannot take the arguments
# listed here, is one PlugtrainError naming the component, its kind and what is missing. Optional members are used
# only when present. A Protocol whose members are all required is ``runtime_checkable``; ``isinstance`` against the
# others would also demand their optional members, so the build check reads :data:`CONTRACTS` instead.


@runtime_checkable
class Backbone(Protocol):
    """What a ``backbones`` factory returns: a ``torch.nn.Module`` (the runtime also checks that it is one).
    Optional attribute ``plugtrain_start_weights``: a JSON-able dict of the weights it was built from (with a one-line
    ``"summary"``), recorded as env.json's ``start_weights`` and printed at a fresh run's start."""

    training: bool  #: True in training mode; the dummy forward restores it.

    def __call__(self, images: Any) -> Any:
        """A batch ``(N, C, H, W)`` to ``(N, num_classes)`` logits, or ``(N, D)`` features when ``num_classes`` is 0
        (a tuple's first item is used)."""

    def parameters(self) -> Any:
        """Every parameter, frozen ones included (``requires_grad = False``): the optimizer gets them all."""

    def named_parameters(self) -> Any:
        """``(name, parameter)`` pairs: ``optimizer.no_decay_norm_bias`` splits by name and shape."""

    def train(self, mode: bool) -> Any:
        """Training or evaluation mode."""

    def eval(self) -> Any:
        """Evaluation mode (the dummy forward, validation)."""

    def to(self, device: Any) -> Any:
        """Move to the run's device; returns the module."""

    def state_dict(self) -> dict[str, Any]:
        """The weights saved in every checkpoint."""

    def load_state_dict(self, state: dict[str, Any]) -> Any:
        """Restore the weights of a checkpoint (resume, evaluate, predict, export)."""


class Loss(Protocol):
    """What a ``losses`` factory returns: a ``torch.nn.Module``, or a plain callable that the runtime wraps in one.
    Required: :meth:`__call__`."""

    def __call__(self, outputs: Any, targets: Any) -> Any:
        """The model's outputs (logits, values or embeddings) and the batch's targets to a scalar tensor."""

    def parameters(self) -> Any:
        """Optional (a Module has it): the loss's own parameters (class centres); trainable ones are trained."""

    plugtrain_requires_callbacks: list[str]  #: Optional: callbacks this loss needs, by name, added unless listed.
    #: Optional: True asks for the model's input batch (normalised, on the device): the training step (and the
    #: pre-flight) then call ``loss(outputs, targets, inputs=batch)``, e.g. to run a teacher model on it. The
    #: validation loss still calls ``loss(outputs, targets)``: such a loss must accept ``inputs`` missing.
    plugtrain_takes_inputs: bool


class Optimizer(Protocol):
    """What an ``optimizers`` factory returns (a ``torch.optim.Optimizer`` is one). Required: :attr:`param_groups`,
    :meth:`step`, :meth:`zero_grad`, :meth:`state_dict`, :meth:`load_state_dict`."""

    param_groups: list[dict[str, Any]]  #: The parameter groups, each with ``"params"`` and ``"lr"`` (warmup scales it).

    def step(self) -> Any:
        """One update from the gradients (through the AMP grad scaler)."""

    def zero_grad(self, *, set_to_none: bool) -> None:
        """After every step, as ``zero_grad(set_to_none=True)``."""

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restored on resume."""

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Optional: a group for parameters a callback unfroze that no optimizer holds yet."""

    def first_step(self) -> Any:
        """Optional, with :meth:`second_step` (SAM): climb to the worst point nearby; a second forward/backward
        follows. Such an optimizer's :meth:`step` is then not called."""

    def second_step(self) -> Any:
        """Optional, with :meth:`first_step`: the update from the second pass's gradients."""


class Scheduler(Protocol):
    """What a ``schedulers`` factory returns (a ``torch.optim.lr_scheduler`` scheduler is one). Required:
    :meth:`step`, :meth:`state_dict`, :meth:`load_state_dict`."""

    def step(self, metrics: float = ...) -> Any:
        """Once per epoch (or per optimizer step when :attr:`interval` is ``"step"``) as ``step()``; a ``step`` that
        names a ``metrics`` parameter is called as ``step(value)`` with the primary metric (ReduceLROnPlateau)."""

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restored on resume."""

    interval: str  #: Optional: ``"epoch"`` or ``"step"``, when ``[scheduler] interval`` leaves it unset.
    optimizer: Any  #: Optional: the optimizer it drives (a resume with a changed schedule re-steps it).

    def set_run_mode(self, mode: str) -> None:
        """Optional: the run's ``mode`` (``"min"`` or ``"max"``), for a scheduler fed the primary metric."""


@runtime_checkable
class Augmentation(Protocol):
    """What an ``augmentations`` factory returns: an albumentations-compatible transform."""

    def __call__(self, *, image: Any) -> dict[str, Any]:
        """``t(image=array)`` with an ``HxWxC`` array (uint8; uint16 or float32 with ``pixels = "raw"``, which the
        run checks the transform can take); returns a dict whose ``"image"`` is the result."""


@runtime_checkable
class DatasetSplit(Protocol):
    """One split of a dataset (``train``, ``val``, ``test``): a sequence of ``(image, target)`` samples. Optional:
    ``targets``, every sample's target without decoding (class_subset, folds, the m-per-class sampler use it)."""

    def __len__(self) -> int:
        """The number of samples."""

    def __getitem__(self, index: int) -> Any:
        """``(image, target)``; a sample that cannot be used raises :class:`plugtrain.core.data.SampleError`."""


@runtime_checkable
class Dataset(Protocol):
    """What a ``datasets`` factory returns: a :class:`plugtrain.core.data.DatasetSplits` (the runtime also checks
    that it is one), each split a :class:`DatasetSplit`."""

    train: DatasetSplit  #: The training samples (not empty).
    val: DatasetSplit  #: The validation samples (not empty).
    test: DatasetSplit | None  #: The test samples, or ``None``.
    class_names: list[str]  #: The class names, in label order (or the names of real-valued targets; may be empty).
    in_chans: int  #: The channels of every image.
    task: str | None  #: What the targets are (``None``: class indices); a run's task lists those it trains on.


class Logger(Protocol):
    """What a ``loggers`` factory returns. Runs on rank 0 only. Required: :meth:`log_metrics`, :meth:`close`."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """At the end of every epoch: ``epoch``, ``train/*``, ``val/*``, ``data/*`` values at the global optimizer
        step ``step``. Once more after training for ``val_swa/*`` (same ``epoch`` and step as the last epoch)."""

    def close(self) -> None:
        """After training, or when the run stops (an error, a signal): flush and release files."""

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Optional. Every ``trainer.log_every_steps`` optimizer steps: ``step/loss`` (the interval's mean over every
        rank), ``step/lr`` (and ``step/lr_N`` per further parameter group), ``step/grad_norm`` (before clipping),
        ``step/throughput`` (samples/s), at the global step."""

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Optional. Once, after training: the flattened resolved spec and the final metrics."""

    def log_image(self, tag: str, image: Any, step: int) -> None:
        """Optional. An ``HxWx3`` uint8 array: augmented samples (``samples/train``, step 0) and what metrics draw
        (``val/confusion_matrix``, ``val/parity_plot``) after each validation."""

    def log_embedding(self, tag: str, embeddings: Any, labels: list[Any], step: int) -> None:
        """Optional. An ``(N, D)`` tensor and its labels (``val/embeddings`` of metric learning) after validation."""


class Metric(Protocol):
    """What a ``metrics`` factory returns (a ``torchmetrics.Metric`` is one). Every rank updates it with its batches;
    :meth:`compute` returns the value over every rank. Required: :meth:`update`, :meth:`compute`, :meth:`reset`,
    :meth:`to`, :meth:`clone`."""

    def update(self, preds: Any, targets: Any) -> None:
        """Each validation batch: the model's outputs (logits, embeddings, or values of shape ``(N,)`` for a
        one-output model) and the targets."""

    def compute(self) -> Any:
        """After the last batch: a number, a tensor (one value per element) or a dict of them, logged as
        ``val/<metric>[/<key>]``."""

    def reset(self) -> None:
        """After :meth:`compute`, before the next validation."""

    def to(self, device: Any) -> Any:
        """Move to the evaluation's device; returns the metric."""

    def clone(self) -> Any:
        """A fresh copy (the EMA and SWA evaluations get their own)."""

    def image(self) -> Any:
        """Optional, rank 0, after :meth:`compute`: an ``HxWx3`` uint8 array to log, or ``None``."""

    def embeddings(self) -> Any:
        """Optional, rank 0, after :meth:`compute`: ``(tensor, labels)`` for a projector, or ``None``."""


class Callback(Protocol):
    """What a ``callbacks`` factory returns. Called on every rank, in the order the spec lists them. Every hook gets
    ``run``, a :class:`~plugtrain.core.runtime.view.RunView` (not the trainer): ``epoch`` (epochs completed),
    ``epochs``, ``global_step``, ``primary_metric``, ``mode``, ``metrics``, ``history``, ``best``, ``lrs``, ``spec``,
    ``run_dir``, ``rank``, ``world_size``, ``is_main``, ``train_samples``, ``val_samples``, ``model``, and
    ``request_stop(reason)``, ``requires_grad_changed()``, ``message(text)``. Any other name is refused (exit 2).
    Every method is optional."""

    def on_train_start(self, run: RunView) -> None:
        """Before the first step (also of a resumed run)."""

    def on_epoch_start(self, run: RunView, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based); not for the rest of an epoch that a resume continues."""

    def on_epoch_end(self, run: RunView, epoch: int, metrics: dict[str, float]) -> None:
        """After validation of epoch ``epoch``, before its checkpoints are written."""

    def on_train_end(self, run: RunView, metrics: dict[str, float]) -> None:
        """After the last epoch (or an early stop), with the final metrics (``val_swa/*`` included)."""

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (tensors and plain types only)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restored on resume."""


class Task(Protocol):
    """What a ``tasks`` factory returns: what a run predicts, and everything in the runtime that depends on it.

    Required: every attribute and method below except those marked optional. Core calls them and never branches on a
    task's name; ``plugtrain.plugins.tasks`` holds the built-in ones (a complete small example: CONTRIBUTING.md,
    "Writing a task"). Tensors are ``torch`` tensors; a method that finds bad input raises
    :class:`plugtrain.core.errors.PlugtrainError` (or ``ValueError``, which core words as bad input)."""

    #: What the model outputs, and so what a loss or metric of this task consumes (``Fits.consumes``): ``"logits"``,
    #: ``"values"``, ``"embeddings"``, or a word of the plugin's own (``"mask_logits"``).
    outputs: str
    #: The ``DatasetSplits.task`` values (a dataset's word for its targets) this task trains on.
    dataset_tasks: tuple[str, ...]
    #: ``(metric key, "max" | "min")``: the primary metric and mode of a spec that sets no ``run.primary_metric``.
    primary: tuple[str, str]
    #: The loss of a spec without ``[loss]`` (a loss component name).
    default_loss: str
    #: The metrics of a spec without ``[[metrics]]`` (metric component names, in order).
    default_metrics: tuple[str, ...]
    #: Metrics put first in every run of this task whose ``[[metrics]]`` lacks them (the primary's, say).
    required_metrics: tuple[str, ...]
    #: Whether ``[mixup]`` (the ``batch_mix`` role: whole batches of images and targets mixed) applies.
    batch_mix: bool

    def num_classes(self, class_names: list[str]) -> int:
        """The ``num_classes`` of losses and metrics for a dataset with ``class_names``; raises ``ValueError`` with
        the rest of a sentence that starts with the dataset's name for data it cannot train on (``"has 1 class(es);
        ... needs >= 2"``)."""

    def backbone_classes(self, num_classes: int) -> int:
        """The ``num_classes`` the backbone is built with: ``num_classes`` for a classifier head, 0 for features."""

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        """The shape of the backbone's output for a dummy batch ``(2, C, H, W)``; a problem (the end of a sentence
        that starts "[backbone] outputs ...") or ``None``. ``shape[1]`` is recorded as the run's embedding_dim."""

    def augment(self, transform: Any, image: Any, target: Any) -> tuple[Any, Any]:
        """One sample through one albumentations-compatible ``transform`` (``HxWxC`` image as the dataset yields
        it: uint8, or uint16 / float32 with ``pixels = "raw"``; the dataset's target): ``(image, target)``.
        Image-only tasks return ``transform(image=image)["image"], target``; a mask task passes the mask as
        ``transform(image=image, mask=target)``. Called once per sample and view, in the loader's workers, with the
        pipeline's generators already seeded."""

    def collate(self, targets: list[Any]) -> Any:
        """The targets of a batch (as :meth:`augment` returned them) to one tensor, dtype included (a class index:
        ``int64``; a value: ``float32``)."""

    def placeholder_target(self, input_shape: tuple[int, ...]) -> Any:
        """The target of a black image of CHW ``input_shape``: the placeholder batch of a rank that has read no
        batch yet is ``collate([t, t])`` (its loss is weighted 0)."""

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        """What the model predicts, for the run's banner: ``"10 classes"``."""

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        """One image's prediction from its output (``output`` is that image's row of the model's outputs, float32 on
        the CPU): a JSON-able dict (``{"class", "index", "probability", "top_k"}`` for one class), the ``image``
        key added by the caller. Raise :class:`~plugtrain.core.errors.PlugtrainError` for a task that cannot
        predict."""

    def predict_text(self, result: dict[str, Any]) -> str:
        """One result of :meth:`predict` as ``plugtrain predict`` prints it after the image name and a tab."""

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        """What an exported model outputs, for its sidecar: ``{"name": "logits", "shape": ["batch", K], "meaning":
        "logits (apply softmax for probabilities)"}`` (``name`` is also the graph's output name)."""

    def shard_target(self, target: Any) -> tuple[str, bytes]:
        """One target as ``plugtrain shards`` writes it into a webdataset sample: ``(extension, bytes)``
        (``("cls", b"3")``)."""

    def fold_targets(self, targets: Any) -> Any:
        """Optional: the targets k-fold cross-validation stratifies on (a 1-D array: integers are dealt per class,
        floats by value), or ``None`` for random folds. Absent: the targets themselves."""

    def relabel(self, target: Any, label_map: dict[int, int]) -> Any:
        """Optional: a target with its class indices mapped by ``label_map`` (``data.class_subset``). Absent: the
        target is a class index, mapped as ``label_map[int(target)]``."""

    def save_prediction(self, result: dict[str, Any], image: str, out_dir: Any) -> dict[str, Any]:
        """Optional: write what a :meth:`predict` result holds beyond a line of text (a mask PNG) as files under the
        ``pathlib.Path`` ``out_dir`` (``plugtrain predict --out DIR``; ``image`` is the image's path or position),
        and return the result to print (the file's path in place of the array)."""

    def report(self, metrics: dict[str, float], class_names: list[str]) -> dict[str, Any]:
        """Optional: more for ``plugtrain evaluate``'s JSON (``"per_class"``: the figures of each class by name),
        from the evaluation's metrics."""

    def report_outputs(self, outputs: Any, targets: Any, class_names: list[str], out_dir: Any,
                       split: str) -> dict[str, Any]:
        """Optional: more for ``plugtrain evaluate``'s JSON from every output of the split (a CPU tensor, as the
        metrics get them) and its targets: per-class figures, a confusion matrix, error quantiles. It may draw
        figures as files ``<name>-<split>.png`` under the ``pathlib.Path`` ``out_dir`` (the run directory) and name
        them in its answer. Costs the memory of every output, so only tasks that need them have it."""

    def tta_merge(self, outputs: list[Any]) -> Any:
        """Optional: one output from the outputs of an image's test-time augmented views (``--tta``), in the form
        the model gives (mean probabilities as their log, mean values, ...), so metrics and :meth:`predict` read it
        unchanged. Absent: the task refuses ``--tta``."""


#: The contract of every kind: ``(protocol, required members)``; the protocol's other members are optional.
CONTRACTS: dict[str, tuple[type, tuple[str, ...]]] = {
    "backbones": (Backbone, ("training", "__call__", "parameters", "named_parameters", "train", "eval", "to",
                             "state_dict", "load_state_dict")),
    "losses": (Loss, ("__call__",)),
    "optimizers": (Optimizer, ("param_groups", "step", "zero_grad", "state_dict", "load_state_dict")),
    "schedulers": (Scheduler, ("step", "state_dict", "load_state_dict")),
    "augmentations": (Augmentation, ("__call__",)),
    "datasets": (Dataset, ("train", "val", "test", "class_names", "in_chans", "task")),
    "loggers": (Logger, ("log_metrics", "close")),
    "metrics": (Metric, ("update", "compute", "reset", "to", "clone")),
    "callbacks": (Callback, ()),
    "tasks": (Task, ("outputs", "dataset_tasks", "primary", "default_loss", "default_metrics", "required_metrics",
                     "batch_mix", "num_classes", "backbone_classes", "check_output", "augment", "collate",
                     "placeholder_target", "describe_outputs", "predict", "predict_text", "export_output",
                     "shard_target")),
}

#: The contract of each split of a dataset (``train``, ``val`` and, when not ``None``, ``test``).
SPLIT_CONTRACT: tuple[type, tuple[str, ...]] = (DatasetSplit, ("__len__", "__getitem__"))
