"""From a :class:`RunSpec` to the objects a run needs, every component through the registry.

Nothing here names a concrete component: datasets, backbones, losses, optimizers, schedulers, augmentations, metrics,
callbacks and loggers are looked up by the spec's names and built with ``Component.build(params, **context)``, the
context arguments being those of :data:`plugtrain.core.hookspecs.CONTEXT`; what the runtime adds itself (resize, the
pipeline's composition, mixup, the EMA, metrics.csv, default loggers and metrics) is found by role
(:data:`plugtrain.core.hookspecs.ROLES`). Every build that can fail runs before the run directory is created, and
every failure becomes one :class:`PlugtrainError` naming the spec section.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import attrs

# Components by name from the catalog: a build imports only the plugins the spec names (not every plugin's hook).
from plugtrain.core.catalog import get_catalog
from plugtrain.core.data import DatasetSplits, SampleError
from plugtrain.core.errors import PlugtrainError, did_you_mean, first_line
from plugtrain.core.hookspecs import CONTRACTS, SINGULAR, SPLIT_CONTRACT
from plugtrain.core.runtime.distributed import DistEnv
from plugtrain.core.spec.model import AugmentationSpec, ComponentSpec, RunSpec, spatial_rank, spatial_size
from plugtrain.core.task import get_task, required_metrics, task_params


def component(kind: str, cspec: ComponentSpec, section: str, **context: Any) -> Any:
    """Build ``cspec`` of ``kind`` with the runtime ``context``; any failure is a PlugtrainError naming ``section``."""
    comp = get_catalog().get(kind, cspec.name)
    try:
        obj = comp.build(cspec.params, **context)
    except PlugtrainError:
        raise
    except Exception as exc:  # a factory's error is the user's input, reported in one line
        raise PlugtrainError(
            f"[{section}] {SINGULAR[kind]} {cspec.name!r} ({comp.plugin}) could not be built: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    problem = contract_problem(kind, obj)
    if problem:
        raise PlugtrainError(f"[{section}] {SINGULAR[kind]} {cspec.name!r} ({comp.plugin}) returned a "
                             f"{type(obj).__name__} that {problem} (see plugtrain.core.hookspecs.{CONTRACTS[kind][0].__name__})")
    return obj


def contract_problem(kind: str, obj: Any) -> str | None:
    """What ``obj`` lacks of its kind's contract (:data:`~plugtrain.core.hookspecs.CONTRACTS`); ``None`` when it fits
    (or the kind has none)."""
    if kind not in CONTRACTS:
        return None
    return protocol_problem(*CONTRACTS[kind], obj)


#: The special methods a contract may name; Python looks them up on the type, and so does the check.
_DUNDERS = ("__call__", "__len__", "__getitem__")


def protocol_problem(protocol: type, required: tuple[str, ...], obj: Any) -> str | None:
    """What ``obj`` lacks of ``protocol``: a ``required`` attribute or method, or a method (required or present) that
    cannot be called with the arguments the protocol gives it; ``None`` when it fits. A method whose protocol
    parameter has a default may be called with or without it: either call binding is enough."""
    for name in inspect.get_annotations(protocol):
        if name in required and not hasattr(obj, name):
            return f"has no attribute {name!r}"
    for name, spec_fn in vars(protocol).items():
        if not inspect.isfunction(spec_fn) or (name.startswith("_") and name not in _DUNDERS):
            continue
        fn = _special(obj, name) if name in _DUNDERS else getattr(obj, name, None)
        if not callable(fn):  # absent, or an attribute of that name that is not a method (a metric's state)
            if name in required:
                return f"has no {name}() method" + (": it is not callable" if name == "__call__" else "")
            continue
        if name in _DUNDERS and name != "__call__":
            continue
        try:
            sig = inspect.signature(obj if name == "__call__" else fn)
        except (TypeError, ValueError):  # a builtin without a signature: trust it
            continue
        calls = _protocol_calls(spec_fn)
        if not any(_binds(sig, args, kwargs) for args, kwargs in calls):
            shown = " or ".join(_call_text(name, args, kwargs) for args, kwargs in calls)
            return f"has a {name}() that cannot be called as {shown}"
    return None


def _special(obj: Any, name: str) -> Any:
    """The special method ``name`` as Python finds it: in the class's own MRO (not the metaclass's ``__call__``)."""
    return next((vars(k)[name] for k in type(obj).__mro__ if name in vars(k)), None)


def _protocol_calls(spec_fn: Any) -> list[tuple[list[str], dict[str, str]]]:
    """The calls a protocol method stands for: its required arguments, and (when it has optional ones) all of them."""
    params = [p for p in inspect.signature(spec_fn).parameters.values() if p.name != "self"]
    calls = []
    for with_optional in (False, True):
        chosen = [p for p in params if with_optional or p.default is inspect.Parameter.empty]
        args = [p.name for p in chosen if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        kwargs = {p.name: p.name for p in chosen if p.kind is p.KEYWORD_ONLY}
        if (args, kwargs) not in calls:
            calls.append((args, kwargs))
    return calls


def _binds(sig: inspect.Signature, args: list[str], kwargs: dict[str, str]) -> bool:
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _call_text(name: str, args: list[str], kwargs: dict[str, str]) -> str:
    return f"{name}({', '.join([*args, *(f'{k}=...' for k in kwargs)])})"


# -- data --------------------------------------------------------------------------------------------------------------
def build_dataset(spec: RunSpec) -> DatasetSplits:
    ctx = {"seed": spec.run.seed, "on_error": spec.data.on_error, "image_size": spec.data.image_size}
    try:
        splits = component("datasets", spec.data.dataset, "data", **ctx)
    except SampleError as exc:
        raise PlugtrainError(f"[data] {exc.path}: {exc.reason}") from None
    if not isinstance(splits, DatasetSplits):
        raise PlugtrainError(f"[data] dataset {spec.data.dataset.name!r} returned {type(splits).__name__}, "
                             "not a DatasetSplits")
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        problem = None if split is None else protocol_problem(*SPLIT_CONTRACT, split)
        if problem:
            raise PlugtrainError(f"[data] dataset {spec.data.dataset.name!r} returned a {name} split (a "
                                 f"{type(split).__name__}) that {problem} (see plugtrain.core.hookspecs.DatasetSplit)")
    for name in ("train", "val"):
        if len(getattr(splits, name)) == 0:
            raise PlugtrainError(f"[data] dataset {spec.data.dataset.name!r} has an empty {name} split")
    task = spec.task_object
    if splits.task not in task.dataset_tasks:
        fits = [n for n in get_catalog().names("tasks") if splits.task in get_task(n).dataset_tasks]
        raise PlugtrainError(f"[run] task = {spec.run.task!r} but dataset {spec.data.dataset.name!r} provides "
                             f"{splits.task or 'class index'} targets" + (f" (for run.task = {' or '.join(map(repr, fits))})"
                                                                           if fits else ""))
    return splits


def class_subset(spec: RunSpec, splits: DatasetSplits) -> tuple[dict[str, list[int] | None], dict[int, int] | None,
                                                                 list[str]]:
    """Indices per split and the label remapping for ``data.class_subset`` (all samples when unset)."""
    names = list(splits.class_names)
    subset = spec.data.class_subset
    if not subset:
        return {"train": None, "val": None, "test": None}, None, names
    unknown = [c for c in subset if c not in names]
    if unknown:
        raise PlugtrainError(f"[data] class_subset names unknown class {unknown[0]!r}." + did_you_mean(unknown[0], names))
    label_map = {names.index(c): i for i, c in enumerate(subset)}
    out: dict[str, list[int] | None] = {}
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        if split is None:
            out[split_name] = None
            continue
        targets = getattr(split, "targets", None)
        if targets is None:
            raise PlugtrainError(f"[data] class_subset needs the dataset's {split_name} split to list its targets "
                                 f"(a `targets` attribute); {spec.data.dataset.name!r} does not")
        out[split_name] = [i for i, t in enumerate(targets) if int(t) in label_map]
    return out, label_map, list(subset)


def fold_subsets(spec: RunSpec, splits: DatasetSplits, subsets: dict[str, list[int] | None]) -> list[int]:
    """``data.fold = [k, K]``: sets ``subsets["train"]`` to the train split's positions outside fold k (stratified,
    seeded folds of its samples, or of its ``class_subset`` selection) and returns those of fold k."""
    from plugtrain.core.runtime.folds import fold_split

    k, folds = spec.data.fold
    base, targets = subsets["train"], getattr(splits.train, "targets", None)
    if targets is None:
        raise PlugtrainError(f"[data] fold needs the train split's targets (a `targets` attribute); dataset "
                             f"{spec.data.dataset.name!r} has none")
    targets = list(targets) if base is None else [targets[i] for i in base]
    stratify = getattr(spec.task_object, "fold_targets", None)  # what the task's folds are dealt by
    if callable(stratify):
        import numpy as np

        chosen = stratify(targets)
        targets = list(chosen) if chosen is not None else list(np.zeros((len(targets), 0)))  # None: random folds
    train, val = fold_split(targets, k, folds, spec.run.seed, list(splits.class_names or []) or None)
    if base is not None:
        train, val = [base[i] for i in train], [base[i] for i in val]
    subsets["train"] = list(train)
    return list(val)


def split_targets(split: Any, indices: list[int] | None, label_map: dict[int, int] | None,
                  why: str = "data.sampler = 'm_per_class'") -> list[int]:
    targets = getattr(split, "targets", None)
    if targets is None:
        raise PlugtrainError(f"{why} needs the dataset to list its targets (a `targets` attribute on the train "
                             "split)")
    targets = [int(t) for t in targets]
    if indices is not None:
        targets = [targets[i] for i in indices]
    if label_map is not None:
        targets = [label_map[t] for t in targets]
    return targets


# -- augmentations -----------------------------------------------------------------------------------------------------
def build_augmentation(a: AugmentationSpec, where: str) -> Any:
    """One augmentation; a composition's ``transforms`` children are built first (depth-first) and passed built."""
    if a.transforms is not None:
        children = [build_augmentation(c, where) for c in a.transforms]
        params = {**a.params, "transforms": children}
        return component("augmentations", ComponentSpec(a.name, params), where)
    return component("augmentations", a, where)


def build_transform(spec: RunSpec, split: str, in_chans: int) -> Any:
    """The pipeline of ``split``: the spec's transforms, then the ``resize`` role's transform to ``data.image_size``
    (unless turned off), composed by the ``compose`` role; ``None`` when that leaves nothing to do. Normalisation is
    not part of it: the trainer normalises whole batches on the device
    (:class:`plugtrain.core.runtime.trainer.ModelInput`), so samples stay raw pixel values (``uint8``)."""
    aug = spec.augmentations
    where = f"augmentations.{split}"
    transforms = [build_augmentation(a, where) for a in getattr(aug, split)]
    size = spatial_size(spec.data.image_size)
    rank = sample_rank(spec)
    if aug.resize and size:
        resize = role_for_rank("augmentations", "resize", rank).factory
        # the role's contract: height= / width= for 2-D images, spatial_size= for any other rank
        transforms.append(resize(height=size[0], width=size[1]) if rank == 2 else resize(spatial_size=list(size)))
    if aug.normalize:
        normalization(spec, in_chans)  # a mean / std that does not fit the images fails here, before anything runs
    if not transforms:
        return None
    compose = role_for_rank("augmentations", "compose", rank).factory
    try:
        return compose(transforms, seed=spec.run.seed)
    except Exception as exc:
        raise PlugtrainError(f"[{where}] cannot compose the pipeline: {type(exc).__name__}: {exc}") from exc


def sample_rank(spec: RunSpec) -> int:
    """The samples' spatial rank as the spec gives it: ``data.image_size`` as a list of 1, 2 or 3 numbers; else 2."""
    return spatial_rank(spec.data.image_size) or 2


def role_for_rank(kind: str, role: str, rank: int) -> Any:
    """The component of ``kind`` claiming ``role`` for samples of spatial rank ``rank``: ``role`` itself for 2-D
    images, ``"<role>:<rank>d"`` (``resize:3d``, ``compose:1d``) for signals and volumes, which a plugin for such data
    claims; none, or several, is a PlugtrainError."""
    reg = get_catalog()
    if rank == 2:
        return reg.with_role(kind, role)
    comp = reg.with_role(kind, f"{role}:{rank}d", required=False)
    if comp is None:
        raise PlugtrainError(f"[data] image_size gives {rank}-D samples, but no loaded plugin has the {role} "
                             f"transform for them (the role '{role}:{rank}d'): install the plugin that handles "
                             f"{rank}-D data (`plugtrain plugins` lists those loaded)")
    return comp


def check_spatial_dims(spec: RunSpec, rank: int) -> None:
    """The backbone and every transform of the spec that declares its ``spatial_dims`` must take ``rank``-D samples
    (the data's): a 2-D transform on volumes would fail, or worse, run on the wrong axes."""
    reg = get_catalog()
    what = {1: "1-D signals", 2: "2-D images", 3: "3-D volumes"}

    def refuse(section: str, kind: str, name: str) -> None:
        try:
            dims = reg.get(kind, name).fits.spatial_dims
        except PlugtrainError:
            return
        if dims and rank not in dims:
            takes = " or ".join(what.get(d, f"{d}-D samples") for d in dims)
            raise PlugtrainError(f"[{section}] {name!r} takes {takes}, but the data are {what.get(rank, rank)} "
                                 f"(data.image_size / the dataset's samples): use a {SINGULAR[kind]} for "
                                 f"{rank}-D data")

    refuse("backbone", "backbones", spec.backbone.name)

    def walk(items: list[AugmentationSpec], where: str) -> None:
        for a in items:
            refuse(where, "augmentations", a.name)
            walk(a.transforms or [], where)

    for split in ("train", "val"):
        walk(getattr(spec.augmentations, split), f"augmentations.{split}")


def data_rank(spec: RunSpec, splits: DatasetSplits) -> int:
    """The samples' spatial rank: the spec's (:func:`sample_rank`), checked against what the dataset's train split
    declares (a ``spatial_dims`` attribute: 1 signals, 3 volumes); signals and volumes need ``data.image_size`` as a
    list, which is how ``check``, ``predict`` and ``export`` know the rank without the data."""
    rank = sample_rank(spec)
    declared = getattr(splits.train, "spatial_dims", None)
    if declared is not None and int(declared) != rank:
        example = {1: "[64]", 2: "[32, 32] (or 32)", 3: "[16, 32, 32]"}.get(int(declared), "[...]")
        raise PlugtrainError(f"[data] dataset {spec.data.dataset.name!r} yields {declared}-D samples but "
                             f"data.image_size gives {rank}-D ones: set data.image_size to their spatial size, a "
                             f"list of {declared} number(s) such as {example}")
    check_spatial_dims(spec, rank)
    return rank


def normalization(spec: RunSpec, in_chans: int) -> tuple[list[float], list[float]]:
    """``augmentations.mean`` and ``std`` in units of the pixels divided by :func:`pixel_scale` (0.5 per channel by
    default), checked against the number of channels."""
    aug = spec.augmentations
    mean = list(aug.mean) if aug.mean is not None else [0.5] * in_chans
    std = list(aug.std) if aug.std is not None else [0.5] * in_chans
    for key, value in (("mean", mean), ("std", std)):
        if len(value) not in (1, in_chans):
            raise PlugtrainError(f"[augmentations] {key} has {len(value)} values but the images have {in_chans} "
                                 f"channel(s)")
    if any(s <= 0 for s in std):
        raise PlugtrainError("[augmentations] std values must be > 0")
    return mean, std


#: The scale of each pixel dtype (its largest value); a dtype not named here (float) is taken as it is (1).
DTYPE_SCALE = {"uint8": 255.0, "uint16": 65535.0}


def pixel_scale(spec: RunSpec) -> float:
    """What the pixels are divided by before ``mean`` and ``std`` apply: ``augmentations.scale`` as resolved by
    :func:`resolve_normalization` (unset: 255, 8-bit data)."""
    return float(spec.augmentations.scale) if spec.augmentations.scale is not None else 255.0


def resolve_normalization(spec: RunSpec, splits: DatasetSplits, in_chans: int) -> None:
    """Fill in what normalisation takes from the data, written into the spec so that the run's resolved spec.toml
    records it (and ``evaluate``, ``predict``, ``export`` read it back): ``augmentations.scale`` from the dtype of
    the training split's first readable sample when not given (left unset for 8-bit data, whose scale is the
    default), and with ``stats = "train"`` the per-channel ``mean`` and ``std`` of the training split, computed once
    and cached beside the runs (:mod:`plugtrain.core.runtime.pixelstats`). Only a split that says its ``pixels`` are
    ``"raw"`` gets a scale by dtype (:func:`data_dtype`)."""
    aug = spec.augmentations
    if not aug.normalize:
        return
    if aug.scale is None:
        dtype = data_dtype(splits.train)
        if dtype != "uint8":
            aug.scale = DTYPE_SCALE.get(dtype, 1.0)
    if aug.stats == "train":
        if (aug.mean is None) != (aug.std is None):
            raise PlugtrainError("[augmentations] stats = \"train\" computes mean and std from the training split: "
                                 "give neither (or both, as a resolved spec.toml records them)")
        if aug.mean is None:
            from plugtrain.core.runtime.pixelstats import train_stats

            aug.mean, aug.std = train_stats(spec, splits.train, in_chans, pixel_scale(spec))


def data_dtype(split: Any) -> str:
    """The dtype of ``split``'s pixels as normalisation sees them: a split whose ``pixels`` are ``"raw"`` (kept as
    stored) has that of its first readable sample; any other is taken as 8-bit (255 is its scale, as always)."""
    if getattr(split, "pixels", None) != "raw":
        return "uint8"
    return first_sample_dtype(split) or "uint8"


def first_sample_dtype(split: Any) -> str | None:
    """The dtype name of the first readable sample's image of ``split`` (None: none of the first 16 readable); a
    split that says its ``pixels`` are ``"uint8"`` (converted to 8 bits) is not read."""
    if getattr(split, "pixels", None) == "uint8":
        return "uint8"
    for i in range(min(len(split), 16)):
        try:
            image = split[i][0]
        except (SampleError, OSError, ValueError):
            continue
        dtype = getattr(image, "dtype", None)
        return None if dtype is None else str(dtype).removeprefix("torch.")
    return None


# -- model and loss ----------------------------------------------------------------------------------------------------
def head_size(spec: RunSpec, splits: DatasetSplits, class_names: list[str]) -> tuple[int, int]:
    """``(num_classes for the backbone, num_classes for loss and metrics)``, as the task says."""
    task = spec.task_object
    try:
        n = int(task.num_classes(list(class_names)))
    except ValueError as exc:
        raise PlugtrainError(f"[data] dataset {spec.data.dataset.name!r} {exc}") from None
    return int(task.backbone_classes(n)), n


def sample_shape(dataset: Any, in_chans: int, image_size: int | list[int] | None) -> tuple[int, ...]:
    """The ``C x spatial`` shape a transformed sample has (the first decodable one), for the dummy forward."""
    for i in range(min(len(dataset), 16)):
        item = dataset[(0, i)]
        if type(item).__name__ == "Failed":
            continue
        image = item[0][0] if isinstance(item[0], list) else item[0]
        if not hasattr(image, "dim"):  # an HWC array (normalize = false): the collate stacks it as CHW
            h, w, c = image.shape if image.ndim == 3 else (*image.shape, 1)
            return (c, h, w)
        return tuple(image.shape)
    if image_size:
        return (in_chans, *spatial_size(image_size))
    raise PlugtrainError("[data] none of the first training samples could be read; cannot infer the image size")


def output_shape(backbone: Any, shape: tuple[int, ...], in_chans: int, channels_last: bool = False) -> tuple[int, ...]:
    """The shape of the backbone's output, by one dummy forward (eval mode, no grad) on two zero images of ``shape``
    (a tuple's first item)."""
    import torch

    was_training = backbone.training
    backbone.eval()
    x = torch.zeros((2, *shape))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            out = backbone(x)
    except Exception as exc:
        msg = first_line(exc) or type(exc).__name__
        hint = ""
        if shape[0] != in_chans or "channels" in msg:
            hint = f" The images have {shape[0]} channel(s): does [backbone] in_chans match?"
        raise PlugtrainError(f"[backbone] a forward pass on a batch of shape {tuple(x.shape)} failed: "
                             f"{type(exc).__name__}: {msg}.{hint}") from exc
    finally:
        backbone.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not hasattr(out, "shape") or out.ndim < 2:
        raise PlugtrainError(f"[backbone] returns {getattr(out, 'shape', type(out).__name__)}; expected (N, features)")
    return tuple(int(d) for d in out.shape)



def param_groups(backbone: Any, criterion: Any, spec: RunSpec, loss_separately: bool) -> list[dict[str, Any]]:
    """Parameter groups: the backbone (decay / no-decay on norm and bias when asked; per layer with
    ``optimizer.layer_decay``, by the ``layer_decay`` role) and the loss's own.

    Every backbone parameter is in a group, frozen ones (``requires_grad = False``) included: they get no gradient,
    so optimizers skip them, and unfreezing them later (:meth:`Trainer.requires_grad_changed`) needs no new group.
    """
    groups: list[dict[str, Any]] = []
    params = list(backbone.parameters())
    if spec.optimizer.layer_decay is not None:
        make = get_catalog().with_role("optimizers", "layer_decay").factory
        groups = make(model=backbone, layer_decay=spec.optimizer.layer_decay,
                      weight_decay=spec.optimizer.params.get("weight_decay"),
                      no_decay_norm_bias=spec.optimizer.no_decay_norm_bias)
    elif spec.optimizer.no_decay_norm_bias:
        decay = [p for n, p in backbone.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
        ids = {id(p) for p in decay}
        no_decay = [p for p in params if id(p) not in ids]
        groups.append({"params": decay})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
    else:
        groups.append({"params": params})
    loss_params = [p for p in criterion.parameters() if p.requires_grad]
    if loss_params and not loss_separately:
        groups.append({"params": loss_params})
    return groups


def is_sam(optimizer: Any) -> bool:
    return callable(getattr(optimizer, "first_step", None)) and callable(getattr(optimizer, "second_step", None))


def build_metrics(spec: RunSpec, num_classes: int, class_names: list[str] | None = None) -> dict[str, Any]:
    """``{"accuracy": Metric, ...}`` (keys without the ``val/`` prefix). The metrics with the role ``always:<task>``
    come first when the spec's list lacks them (the task's ``required_metrics``, then the role ``always:<task>``)."""
    specs = list(spec.metric_specs)
    reg = get_catalog()
    always = required_metrics(spec.run.task, spec.task_object, reg)
    specs[:0] = [ComponentSpec(n) for n in always if not any(m.name == n for m in specs)]
    params = task_params(spec, reg)
    out: dict[str, Any] = {}
    for m in specs:
        key = m.name.split(":")[-1]
        n = 2
        while key in out:
            key, n = f"{m.name.split(':')[-1]}_{n}", n + 1
        out[key] = component("metrics", m, "metrics", num_classes=num_classes, task=spec.run.task,
                             task_params=params, class_names=list(class_names or ()))
    return out


def metric_keys(spec: RunSpec, metric_names: list[str]) -> list[str]:
    keys = ["train/loss", "val/loss"] + [f"val/{k}" for k in metric_names]
    if spec.trainer.ema:
        keys += ["val_ema/loss"] + [f"val_ema/{k}" for k in metric_names]
    if spec.trainer.swa:
        keys += ["val_swa/loss"] + [f"val_swa/{k}" for k in metric_names]
    return keys


@attrs.define
class Built:
    """Everything a run is made of, built and checked, before the run directory exists."""

    spec: RunSpec
    splits: DatasetSplits
    class_names: list[str]
    in_chans: int
    num_classes: int  # for loss and metrics (the backbone gets 0 for metric learning)
    embedding_dim: int
    input_shape: tuple[int, ...]
    backbone: Any
    criterion: Any
    metrics: dict[str, Any]
    callbacks: list[Any]
    train_data: Any  # AugmentedDataset
    val_data: Any
    test_data: Any | None
    train_transform: Any
    val_transform: Any
    train_order: Any = None  # m-per-class or weighted ordering, or None
    class_counts: list[int] | None = None  # samples per class in the train split (class-index targets)
    optimizer: Any = None
    loss_optimizer: Any = None
    scheduler: Any = None
    scheduler_interval: str = "epoch"
    warmup_steps: int = 0
    steps_per_epoch: int = 0
    batches_per_epoch: int = 0
    mixup: Any = None
    sam: bool = False

    @property
    def primary_metric(self) -> str:
        return self.spec.primary_metric


def build_run(spec: RunSpec, dist: DistEnv, purpose: str = "train") -> Built:
    """Build everything of ``spec`` but the loggers; ``purpose`` ``"eval"`` skips optimizer and scheduler."""
    import torch

    from plugtrain.core.runtime.loader import AugmentedDataset

    if spec.trainer.sync_batchnorm and dist.distributed and dist.device.type != "cuda":
        raise PlugtrainError("[trainer] sync_batchnorm = true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                             "implementation); on CPU leave it false: each process normalises by its own batch")
    splits = build_dataset(spec)
    rank = data_rank(spec, splits)  # 1-D signals, 2-D images, 3-D volumes
    subsets, label_map, class_names = class_subset(spec, splits)
    in_chans = int(splits.in_chans)
    resolve_normalization(spec, splits, in_chans)  # scale by dtype, stats = "train": written into the spec
    backbone_classes, num_classes = head_size(spec, splits, class_names)
    train_tf = build_transform(spec, "train", in_chans)
    val_tf = build_transform(spec, "val", in_chans)
    to_tensor = spec.augmentations.normalize
    seed = spec.run.seed
    val_split, val_subset = splits.val, subsets["val"]
    if spec.data.fold:  # cross-validation: fold k of K of the train split validates, the rest trains
        val_split, val_subset = splits.train, fold_subsets(spec, splits, subsets)
    task = spec.task_object
    train_data = AugmentedDataset(splits.train, train_tf, seed, "train", spec.data.num_views, subsets["train"],
                                  label_map, to_tensor, task, spatial_dims=rank)
    val_data = AugmentedDataset(val_split, val_tf, seed, "val", 1, val_subset, label_map, to_tensor, task,
                                spatial_dims=rank)
    test_data = None
    if splits.test is not None:
        test_data = AugmentedDataset(splits.test, val_tf, seed, "test", 1, subsets["test"], label_map, to_tensor,
                                     task, spatial_dims=rank)
    order = None
    if spec.data.sampler == "m_per_class":
        from plugtrain.core.runtime.loader import m_per_class_order

        order = m_per_class_order(split_targets(splits.train, subsets["train"], label_map), spec.data.m_per_class)
    counts = train_class_counts(spec, splits, subsets["train"], label_map, len(class_names))
    if spec.data.sampler == "weighted":
        from plugtrain.core.runtime.loader import weighted_order

        if counts is None:
            raise PlugtrainError("[data] sampler = 'weighted' needs the train split's targets (a `targets` attribute "
                                 f"of dataset {spec.data.dataset.name!r}) and class targets")
        weights = spec.data.class_weights
        if weights is not None and len(weights) != len(class_names):
            raise PlugtrainError(f"[data] class_weights has {len(weights)} values but the dataset has "
                                 f"{len(class_names)} classes ({', '.join(map(str, class_names))})")
        order = weighted_order(split_targets(splits.train, subsets["train"], label_map, "data.sampler = 'weighted'"),
                               weights, len(class_names))
    resolve_loss_weight(spec, counts, len(class_names))

    shape = sample_shape(val_data, in_chans, spec.data.image_size)
    torch.manual_seed(seed)  # model initialisation depends on the seed only
    backbone = component("backbones", spec.backbone, "backbone", num_classes=backbone_classes)
    if not isinstance(backbone, torch.nn.Module):
        raise PlugtrainError(f"[backbone] {spec.backbone.name!r} returned {type(backbone).__name__}, not a torch Module")
    out_shape = output_shape(backbone, shape, in_chans)
    problem = spec.task_object.check_output(out_shape, num_classes)
    if problem:
        raise PlugtrainError(f"[backbone] outputs {problem}")
    emb = out_shape[1]
    with _spec_folder(spec):  # a loss's file parameters (a teacher run) are relative to the spec, as check reads them
        criterion = component("losses", spec.loss, "loss", num_classes=num_classes, embedding_dim=emb)
    if not isinstance(criterion, torch.nn.Module):
        if not callable(criterion):
            raise PlugtrainError(f"[loss] {spec.loss.name!r} returned {type(criterion).__name__}, not a callable")
        criterion = _LossModule(criterion)
    metrics = build_metrics(spec, num_classes, list(class_names))
    keys = metric_keys(spec, list(metrics))
    if spec.primary_metric not in keys:
        raise PlugtrainError(f"[run] primary_metric = {spec.primary_metric!r} is not a metric of this run."
                             + did_you_mean(spec.primary_metric, keys) + f" Known: {', '.join(keys)}")
    callbacks = [component("callbacks", c, "callbacks") for c in spec.callbacks + requested_callbacks(spec, backbone,
                                                                                                      criterion)]
    built = Built(spec=spec, splits=splits, class_names=class_names, in_chans=in_chans, num_classes=num_classes,
                  embedding_dim=emb, input_shape=shape, backbone=backbone, criterion=criterion, metrics=metrics,
                  callbacks=callbacks, train_data=train_data, val_data=val_data, test_data=test_data,
                  train_transform=train_tf, val_transform=val_tf, train_order=order, class_counts=counts)
    if purpose == "train":
        build_training(built, dist)
    return built


def train_class_counts(spec: RunSpec, splits: DatasetSplits, indices: list[int] | None,
                       label_map: dict[int, int] | None, num_classes: int) -> list[int] | None:
    """Samples per class in the training split (its subset, its fold); ``None`` where the task has no classes or the
    split lists no ``targets``."""
    import numpy as np

    from plugtrain.core.runtime.loader import class_counts

    listed = getattr(splits.train, "targets", None)
    if listed is None or num_classes < 1 or np.asarray(listed).ndim != 1 or np.asarray(listed).dtype.kind not in "iub":
        return None  # no targets listed, or targets that are not class indices (real values, label lists)
    try:
        targets = split_targets(splits.train, indices, label_map)
    except (TypeError, ValueError):  # targets that are not class numbers (multi-label vectors)
        return None
    if targets and (min(targets) < 0 or max(targets) >= num_classes):
        return None
    return class_counts(targets, num_classes)


def resolve_loss_weight(spec: RunSpec, counts: list[int] | None, num_classes: int) -> None:
    """A loss parameter ``weight = "balanced"`` becomes ``n / (classes * count)`` per class, from the training
    split's counts (scikit-learn's "balanced"; 0 for a class without samples), written into the spec so that the run's
    resolved spec.toml records the numbers. A weight list of the wrong length is refused here, before the run."""
    weight = spec.loss.params.get("weight")
    if isinstance(weight, str) and weight == "balanced":
        if counts is None:
            raise PlugtrainError(f"[loss] weight = \"balanced\" needs class targets listed by the train split (a "
                                 f"`targets` attribute); dataset {spec.data.dataset.name!r} with task "
                                 f"{spec.run.task!r} has none")
        total = sum(counts)
        spec.loss.params["weight"] = [round(total / (num_classes * c), 6) if c else 0.0 for c in counts]
    elif (isinstance(weight, list) and spec.task_object.backbone_classes(num_classes) == num_classes
          and len(weight) != num_classes):  # a head of one output per class: one weight per class
        raise PlugtrainError(f"[loss] weight has {len(weight)} values but the dataset has {num_classes} classes")


def requested_callbacks(spec: RunSpec, *components: Any) -> list[ComponentSpec]:
    """Callbacks that built components ask for, by name, in a ``plugtrain_requires_callbacks`` attribute (a backbone
    that unfreezes its layers after some epochs asks for the callback that does it), unless the spec lists them."""
    listed = {c.name.split(":")[-1] for c in spec.callbacks}
    out: list[ComponentSpec] = []
    for obj in components:
        for name in getattr(obj, "plugtrain_requires_callbacks", None) or []:
            if name.split(":")[-1] not in listed:
                listed.add(name.split(":")[-1])
                out.append(ComponentSpec(name))
    return out


def _loss_module_class() -> type:
    import torch

    class LossModule(torch.nn.Module):
        """A plain callable loss as a Module (so that it can be moved, wrapped and saved like any other)."""

        def __init__(self, fn: Any) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, outputs: Any, targets: Any) -> Any:
            return self.fn(outputs, targets)

    return LossModule


def _spec_folder(spec: RunSpec) -> Any:
    """:func:`~.rundir.checking_spec` of the spec's file (``CheckContext.spec_dir`` its folder) while a component is
    built; nothing for a spec without a file."""
    import contextlib

    from plugtrain.core.runtime.rundir import checking_spec

    return checking_spec(spec.source) if spec.source else contextlib.nullcontext()


def _LossModule(fn: Any) -> Any:
    return _loss_module_class()(fn)


def train_sampler(built: Built, dist: DistEnv) -> Any:
    from plugtrain.core.runtime.loader import GlobalBatchSampler

    spec = built.spec
    t = spec.trainer
    max_batches = t.max_steps_per_epoch * t.grad_accum if t.max_steps_per_epoch else None
    return GlobalBatchSampler(len(built.train_data), spec.data.batch_size, spec.run.seed, dist.rank, dist.world_size,
                              shuffle=True, drop_last=spec.data.drop_last, max_batches=max_batches,
                              order=built.train_order)


def build_training(built: Built, dist: DistEnv) -> None:
    """Optimizer(s), scheduler, warmup, mixup: what training needs beyond evaluation."""
    spec = built.spec
    t = spec.trainer
    batches = train_sampler(built, dist).batches_per_epoch()
    if batches == 0:
        global_batch = spec.data.batch_size * dist.world_size
        raise PlugtrainError(f"[data] the train split has {len(built.train_data)} samples, fewer than one global batch "
                             f"of {global_batch} (batch_size x processes) with drop_last = true")
    steps = math.ceil(batches / t.grad_accum)
    built.batches_per_epoch, built.steps_per_epoch = batches, steps

    loss_separately = spec.loss.optimizer is not None
    groups = param_groups(built.backbone, built.criterion, spec, loss_separately)
    built.optimizer = component("optimizers", spec.optimizer, "optimizer", params=groups, model=built.backbone)
    for g in built.optimizer.param_groups:  # layer decay: each group's share of the lr, before any scheduler reads it
        if "lr_scale" in g and not g.get("lr_scaled"):
            g["lr"], g["lr_scaled"] = g["lr"] * g["lr_scale"], True
    loss_params = [p for p in built.criterion.parameters() if p.requires_grad]
    if loss_separately:
        if not loss_params:
            raise PlugtrainError(f"[loss.optimizer] is set but loss {spec.loss.name!r} has no parameters to train")
        built.loss_optimizer = component("optimizers", spec.loss.optimizer, "loss.optimizer", params=loss_params,
                                         model=built.criterion)
    built.sam = is_sam(built.optimizer)
    if built.sam and (t.grad_accum > 1 or t.precision == "fp16" or loss_separately):
        raise PlugtrainError(f"[optimizer] {spec.optimizer.name!r} takes two steps per batch (SAM); it cannot be "
                             "combined with trainer.grad_accum > 1, precision = 'fp16' or a [loss.optimizer]")

    if spec.scheduler is not None:
        epochs = spec.run.epochs
        built.scheduler = component("schedulers", spec.scheduler, "scheduler", optimizer=built.optimizer,
                                    epochs=epochs, steps_per_epoch=steps, total_steps=epochs * steps)
        built.scheduler_interval = spec.scheduler.interval or getattr(built.scheduler, "interval", None) or "epoch"
        if built.scheduler_interval not in ("epoch", "step"):
            built.scheduler_interval = "epoch"
        built.warmup_steps = spec.scheduler.warmup_steps or round(spec.scheduler.warmup_epochs * steps)
        set_run_mode = getattr(built.scheduler, "set_run_mode", None)
        if callable(set_run_mode):  # a scheduler fed the primary metric learns its direction (ReduceLROnPlateau)
            set_run_mode(spec.mode)
    if spec.mixup is not None:
        if not spec.task_object.batch_mix:
            raise PlugtrainError(f"[mixup] does not work for run.task = {spec.run.task!r}")
        m = spec.mixup
        mix = get_catalog().with_role("augmentations", "batch_mix").factory
        built.mixup = mix(num_classes=built.num_classes, mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha,
                          prob=m.prob, switch_prob=m.switch_prob, mode=m.mode, label_smoothing=m.label_smoothing)
        if spec.data.batch_size % 2:
            raise PlugtrainError("[mixup] needs an even data.batch_size")


def build_loggers(spec: RunSpec, run_dir: Path, rank: int, spec_dict: dict[str, Any]) -> list[Any]:
    """The loggers (rank 0 only), with the ``metrics_csv`` logger added when the spec left it out (metrics.csv always
    exists)."""
    loggers = list(spec.loggers)
    csv = get_catalog().with_role("loggers", "metrics_csv", required=False)
    if csv is not None and not any(c.name.split(":")[-1] == csv.name for c in loggers):
        loggers.append(ComponentSpec(get_catalog().spec_name(csv)))
    built: list[Any] = []
    try:
        for c in loggers:
            built.append(component("loggers", c, "loggers", run_dir=run_dir, spec=spec_dict, rank=rank))
    except BaseException:  # a logger that cannot start: those already started are closed, not left open
        for logger in built:
            try:
                logger.close()
            except Exception:  # the first error is the one to report
                pass
        raise
    return built


def build_ema(model: Any, decay: float) -> Any:
    """The model EMA (``trainer.ema``) of ``model``: the ``ema`` role's object, with ``.module``,
    ``update(model, step=)``, ``state_dict()`` and ``load_state_dict()``."""
    comp = get_catalog().with_role("callbacks", "ema")
    try:
        return comp.factory(model=model, decay=decay)
    except PlugtrainError:
        raise
    except Exception as exc:
        raise PlugtrainError(f"[trainer] ema: {comp.name!r} ({comp.plugin}) could not be built: "
                             f"{type(exc).__name__}: {first_line(exc)}") from exc


def check_loggers(spec: RunSpec) -> None:
    """Resolve every logger name before the run directory exists (their factories run after)."""
    for c in spec.loggers:
        get_catalog().get("loggers", c.name)
