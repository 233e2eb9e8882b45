"""The typed run spec: attrs classes that the runtime consumes (it never reads raw dicts).

A TOML run spec is parsed, composed (``extends``), overridden (``--set``) and validated by
:mod:`plugtrain.core.spec.loader`, which builds a :class:`RunSpec` with :func:`from_dict`. The section fields below
are the spec's own keys; a component section (``[backbone]``, ``[loss]``, ...) takes ``name`` plus the component's
parameters, read from its factory's signature, beside these keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

PRECISIONS = ("fp32", "fp16", "bf16")


def role_names(kind: str, role: str) -> list[str]:
    """The spec names of the components of ``kind`` that claim ``role`` (registration order)."""
    from plugtrain.core.catalog import get_catalog

    reg = get_catalog()
    return [reg.spec_name(c) for c in reg.role_components(kind, role)]


class _DefaultMetrics(Mapping[str, list[str]]):
    """task name -> the metric names a spec without ``[[metrics]]`` gets (the task's ``default_metrics``, then those
    of the metrics that claim the role ``default:<task>``), read from the registry when asked."""

    def __getitem__(self, task: str) -> list[str]:
        from plugtrain.core.task import default_metrics, get_task

        if task not in _task_names():
            raise KeyError(task)
        return default_metrics(task, get_task(task))

    def __iter__(self) -> Iterator[str]:
        return iter(_task_names())

    def __len__(self) -> int:
        return len(_task_names())


def _task_names() -> list[str]:
    from plugtrain.core.catalog import get_catalog

    return get_catalog().names("tasks")


def default_loss(run: RunSection) -> LossSection:
    """The ``[loss]`` of a spec without one: its task's ``default_loss`` (with its parameters' defaults)."""
    from plugtrain.core.task import get_task

    return LossSection(name=get_task(run.task).default_loss)


def default_task() -> str:
    """The ``run.task`` of a spec that sets none: the task that claims the role ``default``."""
    from plugtrain.core.task import default_task_name

    return default_task_name()


DEFAULT_METRICS: Mapping[str, list[str]] = _DefaultMetrics()
#: Metrics that are better when lower: a primary metric named so defaults to ``mode = "min"``.
MIN_METRICS = frozenset({"loss", "mae", "mse", "rmse", "error", "epoch_time"})


def _task_name(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """``run.task`` names a registered task (an unknown one: a did-you-mean)."""
    from plugtrain.core.catalog import get_catalog
    from plugtrain.core.errors import PlugtrainError

    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a task name (a string), got {value!r}")
    try:
        get_catalog().get("tasks", value)
    except PlugtrainError as exc:
        raise ValueError(str(exc)) from None


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _decay(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A factor in (0, 1] (``optimizer.layer_decay``); the checker reads the range from this name."""
    if value is not None and not (0 < value <= 1):
        raise ValueError(f"{attribute.name} must be in (0, 1], got {value!r}")


def _spatial_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """``data.image_size``: one positive int (a square 2-D image) or a list of 1, 2 or 3 positive ints (the spatial
    size of a signal, an image or a volume)."""
    if value is None:
        return
    if isinstance(value, list):
        if not 1 <= len(value) <= 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                for x in value):
            raise ValueError(f"{attribute.name} must be a positive int or a list of 1, 2 or 3 positive ints (the "
                             f"spatial size: [length], [height, width] or [depth, height, width]), got {value!r}")
    elif value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def spatial_size(image_size: int | list[int] | None) -> tuple[int, ...] | None:
    """``data.image_size`` as the spatial size of a sample: an int ``s`` is ``(s, s)`` (a square 2-D image)."""
    if image_size is None:
        return None
    return tuple(int(x) for x in image_size) if isinstance(image_size, (list, tuple)) else (int(image_size),) * 2


def spatial_rank(image_size: Any) -> int | None:
    """How many spatial dimensions ``data.image_size`` gives the samples (2 for an int; None when unset or not
    valid, which its own check reports)."""
    if isinstance(image_size, list) and 1 <= len(image_size) <= 3:
        return len(image_size)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return 2
    return None


def _fold(value: list[int] | None) -> None:
    if value is not None and not (len(value) == 2 and value[1] >= 2 and 1 <= value[0] <= value[1]):
        raise ValueError(f"fold must be [k, K] with K >= 2 and 1 <= k <= K, got {value!r}")


@attrs.frozen
class _Between:
    """A validator: ``lo <= value <= hi`` (``None`` passes). The checker and the JSON Schema read ``lo`` / ``hi``."""

    lo: float
    hi: float

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not (self.lo <= value <= self.hi):
            raise ValueError(f"{attribute.name} must be in [{self.lo:g}, {self.hi:g}], got {value!r}")


_probability = _Between(0.0, 1.0)
#: A seed must fit every generator a component may seed with it (numpy's legacy ``RandomState`` and scikit-learn's
#: ``random_state`` take 0 .. 2**32 - 1; ``numpy.random.default_rng`` refuses negative seeds).
SEED_MAX = 2**32 - 1
_seed = _Between(0, SEED_MAX)

BACKENDS = ("auto", "gloo", "nccl", "mpi", "ucc", "xccl")
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _device(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, str) and not _DEVICE.fullmatch(value):
        from plugtrain.core.errors import did_you_mean

        hint = did_you_mean(value, ["auto", "cpu", "cuda", "mps", "xpu"])
        raise ValueError(f"expected \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"mps\" or \"xpu[:N]\", got {value!r}.{hint}")


@attrs.define
class ComponentSpec:
    """A registered component by name (``PLUGIN:name`` allowed) with the parameters the spec gives it."""

    name: str
    params: dict[str, Any] = attrs.Factory(dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@attrs.define
class AugmentationSpec(ComponentSpec):
    """An augmentation; a composition (OneOf, SomeOf, Sequential, ...) holds its children in ``transforms``."""

    transforms: list[AugmentationSpec] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, **self.params}
        if self.transforms is not None:
            d["transforms"] = [t.to_dict() for t in self.transforms]
        return d


@attrs.define
class RunSection:
    name: str
    output_dir: str = "runs"
    seed: int = attrs.field(default=0, validator=_seed)
    epochs: int = attrs.field(default=10, validator=_positive)
    task: str = attrs.field(factory=default_task, validator=_task_name)  # a task component (plugtrain list tasks)
    primary_metric: str | None = None  # default by task: its ``primary``
    mode: Literal["max", "min"] | None = attrs.field(default=None, validator=v.optional(v.in_(("max", "min"))))
    deterministic: bool = False


@attrs.define
class DataSection:
    dataset: ComponentSpec
    image_size: int | list[int] | None = attrs.field(default=None, validator=_spatial_size)  # [L] / [H, W] / [D, H, W]
    batch_size: int = attrs.field(default=64, validator=_positive)
    val_batch_size: int | None = attrs.field(default=None, validator=_positive)
    num_workers: int = attrs.field(default=2, validator=_non_negative)
    persistent_workers: bool = True
    prefetch_factor: int = attrs.field(default=2, validator=_positive)
    pin_memory: bool | None = None  # None: on when training on a GPU
    drop_last: bool = True
    on_error: Literal["raise", "skip"] = attrs.field(default="raise", validator=v.in_(("raise", "skip")))
    sampler: Literal["random", "m_per_class", "weighted"] = attrs.field(
        default="random", validator=v.in_(("random", "m_per_class", "weighted")))
    class_weights: list[float] | None = None  # sampler = "weighted": each class's share of the draws (default: equal)
    m_per_class: int = attrs.field(default=4, validator=_positive)
    num_views: int = attrs.field(default=1, validator=_positive)
    class_subset: list[str] | None = None
    fold: list[int] | None = attrs.field(default=None, validator=lambda i, a, v: _fold(v))  # [k, K]: CV fold k of K


@attrs.define
class LossSection(ComponentSpec):
    """The loss; ``[loss.optimizer]`` gives a loss with parameters (ArcFace centres) an optimizer of its own."""

    optimizer: ComponentSpec | None = None


@attrs.define
class OptimizerSection(ComponentSpec):
    no_decay_norm_bias: bool = False
    layer_decay: float | None = attrs.field(default=None, validator=_decay)  # layer-wise lr decay, timm's groups


@attrs.define
class SchedulerSection(ComponentSpec):
    interval: Literal["epoch", "step"] | None = None  # None: the scheduler's own (per epoch unless it says)
    warmup_epochs: float = attrs.field(default=0.0, validator=_non_negative)
    warmup_steps: int = attrs.field(default=0, validator=_non_negative)
    warmup_start_factor: float = attrs.field(default=0.1, validator=_positive)


@attrs.define
class AugmentationsSection:
    train: list[AugmentationSpec] = attrs.Factory(list)
    val: list[AugmentationSpec] = attrs.Factory(list)
    resize: bool = True  # append Resize(image_size) unless false
    normalize: bool = True  # append Normalize(mean, std) and to-tensor unless false
    mean: list[float] | None = None  # None: 0.5 per channel (in units of the pixels divided by ``scale``)
    std: list[float] | None = None
    scale: float | None = attrs.field(default=None, validator=_positive)  # None: by dtype (255 uint8, 65535 uint16)
    stats: Literal["given", "train"] = attrs.field(default="given", validator=v.in_(("given", "train")))
    save_samples: int = attrs.field(default=0, validator=_non_negative)


@attrs.define
class MixupSection:
    """timm's Mixup / CutMix on batches (``[mixup]``); off unless the section is present."""

    mixup_alpha: float = attrs.field(default=0.8, validator=_non_negative)
    cutmix_alpha: float = attrs.field(default=1.0, validator=_non_negative)
    prob: float = attrs.field(default=1.0, validator=_probability)
    switch_prob: float = attrs.field(default=0.5, validator=_probability)
    mode: Literal["batch", "pair", "elem"] = "batch"
    label_smoothing: float = attrs.field(default=0.1, validator=_probability)


@attrs.define
class TrainerSection:
    precision: Literal["fp32", "fp16", "bf16"] = attrs.field(default="fp32", validator=v.in_(PRECISIONS))
    grad_accum: int = attrs.field(default=1, validator=_positive)
    clip_grad_norm: float | None = attrs.field(default=None, validator=_positive)
    clip_grad_value: float | None = attrs.field(default=None, validator=_positive)
    channels_last: bool = False
    compile: bool = False
    device: str = attrs.field(default="auto", validator=_device)  # auto | cpu | cuda | cuda:N | mps | xpu[:N]
    backend: Literal["auto", "gloo", "nccl", "mpi", "ucc", "xccl"] = attrs.field(
        default="auto", validator=v.in_(BACKENDS))  # auto: nccl on GPU, gloo on CPU
    strategy: Literal["ddp", "fsdp"] = "ddp"
    sync_batchnorm: bool = False
    log_every_steps: int = attrs.field(default=50, validator=_positive)
    val_every_epochs: int = attrs.field(default=1, validator=_positive)
    checkpoint_every_epochs: int = attrs.field(default=0, validator=_non_negative)  # epoch-NNNN.pt; 0 = never
    checkpoint_every_steps: int = attrs.field(default=0, validator=_non_negative)  # last.pt mid-epoch; 0 = never
    keep_top_k: int = attrs.field(default=0, validator=_non_negative)  # epoch-NNNN.pt kept by metric; 0 = all
    max_steps_per_epoch: int | None = attrs.field(default=None, validator=_positive)  # cut epochs short (tests)
    ema: bool = False
    ema_decay: float = attrs.field(default=0.9998, validator=_probability)
    ema_for_best: bool = False
    swa: bool = False
    swa_start_epoch: int | None = attrs.field(default=None, validator=_non_negative)
    swa_lr: float | None = attrs.field(default=None, validator=_positive)
    swa_anneal_epochs: int = attrs.field(default=10, validator=_non_negative)  # epochs to reach swa_lr (torch's)


def default_loggers() -> list[ComponentSpec]:
    """The loggers of a spec that names no ``[[loggers]]``: those with the role ``default``."""
    return [ComponentSpec(name) for name in role_names("loggers", "default")]


@attrs.define
class TaskSection:
    """The task's parameters: ``[task] threshold = 0.5`` (the task itself is ``run.task``; ``plugtrain show tasks
    NAME`` lists them)."""


@attrs.define
class RunSpec:
    """A fully resolved run spec. ``source`` is the path of the spec file it came from (or ``None``)."""

    run: RunSection
    data: DataSection
    backbone: ComponentSpec
    loss: LossSection
    optimizer: OptimizerSection
    scheduler: SchedulerSection | None = None
    augmentations: AugmentationsSection = attrs.Factory(AugmentationsSection)
    mixup: MixupSection | None = None
    loggers: list[ComponentSpec] = attrs.Factory(lambda: default_loggers())
    metrics: list[ComponentSpec] | None = None  # None: DEFAULT_METRICS[task]
    callbacks: list[ComponentSpec] = attrs.Factory(list)
    trainer: TrainerSection = attrs.Factory(TrainerSection)
    task: dict[str, Any] | None = None  # the ``[task]`` table: the parameters of the task ``run.task`` names
    source: str | None = attrs.field(default=None, eq=False)
    #: What composing the spec did that a reader may not expect (``extends`` switching a component, ``unset``).
    notes: list[str] = attrs.field(factory=list, eq=False, repr=False)

    @property
    def task_object(self) -> Any:
        """The :class:`~plugtrain.core.hookspecs.Task` that ``run.task`` names."""
        from plugtrain.core.task import spec_task

        return spec_task(self)

    @property
    def primary_metric(self) -> str:
        return self.run.primary_metric or self.task_object.primary[0]

    @property
    def mode(self) -> str:
        """``run.mode``, else guessed from the primary metric: ``min`` for losses and errors, ``max`` otherwise."""
        if self.run.mode:
            return self.run.mode
        if self.run.primary_metric is None:
            return self.task_object.primary[1]
        leaf = self.run.primary_metric.rsplit("/", 1)[-1].lower()
        return "min" if leaf in MIN_METRICS or leaf.endswith(("loss", "error")) else "max"

    @property
    def metric_specs(self) -> list[ComponentSpec]:
        if self.metrics is not None:
            return self.metrics
        return [ComponentSpec(n) for n in DEFAULT_METRICS[self.run.task]]


#: The spec's sections: the attrs class of each and whether it is a component section (``name`` + parameters)
#: of which kind. ``loggers``, ``metrics`` and ``callbacks`` are arrays of tables (``[[loggers]]``).
SECTIONS: dict[str, tuple[type, str | None]] = {
    "run": (RunSection, None),
    "task": (TaskSection, "tasks"),  # the parameters of the task that ``run.task`` names (no ``name`` of its own)
    "data": (DataSection, "datasets"),  # its ``dataset`` key names the component; its params sit beside
    "backbone": (ComponentSpec, "backbones"),
    "loss": (LossSection, "losses"),
    "optimizer": (OptimizerSection, "optimizers"),
    "scheduler": (SchedulerSection, "schedulers"),
    "augmentations": (AugmentationsSection, "augmentations"),
    "mixup": (MixupSection, None),
    "loggers": (ComponentSpec, "loggers"),
    "metrics": (ComponentSpec, "metrics"),
    "callbacks": (ComponentSpec, "callbacks"),
    "trainer": (TrainerSection, None),
}
REQUIRED_SECTIONS = ("run", "data", "backbone", "optimizer")  # no [loss]: the task's default_loss


def own_keys(cls: type) -> list[str]:
    """The keys a section class defines itself (for ComponentSpec subclasses: besides ``name`` and ``params``)."""
    return [a.name for a in attrs.fields(cls) if a.name not in ("params", "transforms")]


def _component(cls: type, d: dict[str, Any], name_key: str = "name") -> Any:
    d = dict(d)
    name = d.pop(name_key)
    own = {k: d.pop(k) for k in own_keys(cls) if k in d and k != "name"}
    if cls is LossSection and "optimizer" in own and own["optimizer"] is not None:
        own["optimizer"] = _component(ComponentSpec, own["optimizer"])
    return cls(name=name, params=d, **own)


def _augmentation(d: dict[str, Any]) -> AugmentationSpec:
    d = dict(d)
    name = d.pop("name")
    children = d.pop("transforms", None)
    return AugmentationSpec(name, d, None if children is None else [_augmentation(c) for c in children])


def from_dict(d: dict[str, Any], source: str | None = None) -> RunSpec:
    """Build a :class:`RunSpec` from a composed, validated spec dict (attrs validators still apply)."""
    data = dict(d["data"])
    dataset_name = data.pop("dataset")
    data_own = {k: data.pop(k) for k in own_keys(DataSection) if k in data and k != "dataset"}
    aug = dict(d.get("augmentations", {}))
    for split in ("train", "val"):
        aug[split] = [_augmentation(a) for a in aug.get(split, [])]
    run = RunSection(**d["run"])
    return RunSpec(
        run=run,
        data=DataSection(dataset=ComponentSpec(dataset_name, data), **data_own),
        backbone=_component(ComponentSpec, d["backbone"]),
        loss=_component(LossSection, d["loss"]) if "loss" in d else default_loss(run),
        optimizer=_component(OptimizerSection, d["optimizer"]),
        scheduler=_component(SchedulerSection, d["scheduler"]) if d.get("scheduler") else None,
        augmentations=AugmentationsSection(**aug),
        mixup=MixupSection(**d["mixup"]) if "mixup" in d else None,
        loggers=[_component(ComponentSpec, x) for x in d["loggers"]] if "loggers" in d else default_loggers(),
        metrics=[_component(ComponentSpec, x) for x in d["metrics"]] if "metrics" in d else None,
        callbacks=[_component(ComponentSpec, x) for x in d.get("callbacks", [])],
        trainer=TrainerSection(**d.get("trainer", {})),
        task=dict(d["task"]) if d.get("task") else None,
        source=source,
    )


def to_dict(spec: RunSpec) -> dict[str, Any]:
    """The resolved spec as a plain TOML-able dict (defaults filled; ``None`` values left out)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, ComponentSpec):
            out = obj.to_dict()
            for a in attrs.fields(type(obj)):
                if a.name not in ("name", "params", "transforms"):
                    val = getattr(obj, a.name)
                    if val is not None:
                        out[a.name] = plain(val)
            return out
        if attrs.has(type(obj)):
            return {a.name: plain(getattr(obj, a.name)) for a in attrs.fields(type(obj))
                    if getattr(obj, a.name) is not None}
        if isinstance(obj, (list, tuple)):
            return [plain(x) for x in obj]
        if isinstance(obj, dict):
            return {k: plain(x) for k, x in obj.items() if x is not None}
        return obj

    out: dict[str, Any] = {}
    for section in SECTIONS:
        value = getattr(spec, section)
        if value is None:
            continue
        if section == "data":
            d = plain(value)
            ds = d.pop("dataset")
            out["data"] = {"dataset": ds.pop("name"), **ds, **d}
        else:
            out[section] = plain(value)
    return out
