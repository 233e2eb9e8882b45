"""Rules on combinations of keys across the spec: values each right on its own that cannot train together.

:class:`CrossRules` owns them (SWA start against the epochs, FSDP against precision and the other trainer switches,
what losses and metrics fit ``run.task`` and the views, what an optimizer of several passes per step and a
``[loss.optimizer]`` need, ``[mixup]``, ``run.primary_metric``, warmups longer than the
run, ``augmentations.std``, run directories that cannot be made, the ``m_per_class`` sampler's batch size, the
``weighted`` sampler's ``class_weights``). It runs
after :class:`plugtrain.core.spec.validate.Validator` has checked each section, and reports to it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.spec.tomlpos import format_path
from plugtrain.core.task import default_metrics, default_task_name, get_task, required_metrics

if TYPE_CHECKING:
    from plugtrain.core.spec.validate import Validator


class CrossRules:
    """Checks the rules that span sections or keys; each problem names the other keys it depends on (``related``)."""

    def __init__(self, validator: Validator) -> None:
        self.registry = validator.registry
        self.add = validator.add

    def check(self, d: dict[str, Any]) -> None:
        """Every rule, on the whole composed spec dict ``d`` (after its sections are checked one by one)."""
        run = d.get("run") if isinstance(d.get("run"), dict) else {}
        trainer = d.get("trainer") if isinstance(d.get("trainer"), dict) else {}
        epochs = run.get("epochs")
        start = trainer.get("swa_start_epoch")
        if (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1  # else reported already
                and isinstance(start, int) and not isinstance(start, bool)
                and trainer.get("swa") is True and start >= epochs):
            self.add(("trainer", "swa_start_epoch"),
                     f"trainer.swa_start_epoch ({start}) must be below run.epochs ({epochs}) for SWA to run",
                     related=(("run", "epochs"), ("trainer", "swa")))
        if trainer.get("strategy") == "fsdp":
            refused = [(trainer.get("precision") == "fp16", 'precision = "fp16" (use "bf16")')]
            refused += [(trainer.get(key) is True, f"{key} = true")
                        for key in ("ema", "swa", "compile", "sync_batchnorm", "channels_last")]
            bad = [what for cond, what in refused if cond]
            if bad:
                self.add(("trainer", "strategy"), f'trainer.strategy = "fsdp" cannot be combined with '
                                                  f'{", ".join(bad)} (yet); use strategy = "ddp" for those',
                         related=tuple(("trainer", k) for k in ("precision", "ema", "swa", "compile",
                                                                "sync_batchnorm", "channels_last")))
        data = d.get("data") if isinstance(d.get("data"), dict) else {}
        self.fit_checks(d, run, data)
        self.optimizer_checks(d, trainer)
        self.schedule_checks(d, run, trainer)
        self.pipeline_checks(d, data)
        spatial_checks(self, d, data)
        self.run_dir_checks(run)
        self.sampler_checks(run, data)
        batch, m = data.get("batch_size"), data.get("m_per_class", 4)
        if (data.get("sampler") == "m_per_class" and isinstance(batch, int) and isinstance(m, int)
                and not isinstance(batch, bool) and not isinstance(m, bool) and batch >= 1 and m >= 1
                and batch % m):
            self.add(("data", "batch_size"),
                     f"data.batch_size ({batch}) must be a multiple of data.m_per_class ({m}) with sampler = "
                     "'m_per_class': every batch (on every process) holds whole groups of m samples of a class",
                     related=(("data", "m_per_class"), ("data", "sampler")))

    def sampler_checks(self, run: dict[str, Any], data: dict[str, Any]) -> None:
        """``data.class_weights``: only with ``sampler = "weighted"``, non-negative, not all zero, one per class of
        ``class_subset`` when that names the classes (else the build checks the count against the dataset's)."""
        task = self._task(run) if data.get("sampler") == "weighted" else None
        if task is not None and None not in task.dataset_tasks:  # its targets are not one class index per sample
            self.add(("data", "sampler"), f"data.sampler = \"weighted\" draws by class; a {run.get('task')} run has "
                     "no classes (use \"random\")", related=(("run", "task"),))
        weights = data.get("class_weights")
        if not isinstance(weights, list) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                    for w in weights):
            return  # absent, or a type error reported already
        if data.get("sampler") != "weighted":
            self.add(("data", "class_weights"), "data.class_weights weighs the classes of sampler = \"weighted\"; "
                     f"set data.sampler = \"weighted\" (it is {data.get('sampler', 'random')!r}) or remove it",
                     related=(("data", "sampler"),))
        elif any(w < 0 or not math.isfinite(w) for w in weights) or not any(w > 0 for w in weights):
            self.add(("data", "class_weights"), "data.class_weights must be finite numbers >= 0, at least one > 0")
        subset = data.get("class_subset")
        if isinstance(subset, list) and subset and len(subset) != len(weights):
            self.add(("data", "class_weights"), f"data.class_weights has {len(weights)} values but data.class_subset "
                     f"names {len(subset)} classes", related=(("data", "class_subset"),))

    def _quiet(self, kind: str, name: Any) -> Any:
        """The component ``name`` of ``kind``, or None (an unknown name is reported where it is written)."""
        if not isinstance(name, str):
            return None
        try:
            return self.registry.get(kind, name)
        except PlugtrainError:
            return None

    def _fitting(self, kind: str, task: str, views: bool = False) -> str:
        names = [c.name for c in self.registry.components(kind)
                 if (c.fits.tasks or c.fits.consumes) and c.fits.fits_task(task) and (not views or c.fits.views)]
        if not names:
            return ""
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f" {kind.capitalize()} that fit: {shown}."

    def fit_checks(self, d: dict[str, Any], run: dict[str, Any], data: dict[str, Any]) -> None:
        """What each loss and metric declares it fits (``Component.fits``) against ``run.task`` and the views."""
        task_obj = self._task(run, report=True)
        if task_obj is None:
            return  # reported with run.task
        task = run.get("task") or default_task_name(self.registry)
        produced = task_obj.outputs
        task_path = ("run", "task")
        loss = d.get("loss") if isinstance(d.get("loss"), dict) else {}
        lcomp = self._quiet("losses", loss.get("name"))
        if lcomp is not None and not lcomp.fits.fits_task(task):
            takes = f" (it takes {lcomp.fits.consumes})" if lcomp.fits.consumes else ""
            self.add(("loss", "name"), f"loss.name: loss {loss['name']!r} fits {lcomp.fits.task_text()} runs{takes}, "
                                       f"but run.task = {task!r} gives the loss {produced}."
                     + self._fitting("losses", task), related=(task_path,))
        metrics = d.get("metrics")
        for i, m in enumerate(metrics if isinstance(metrics, list) else []):
            mcomp = self._quiet("metrics", m.get("name")) if isinstance(m, dict) else None
            if mcomp is not None and not mcomp.fits.fits_task(task):
                self.add(("metrics", i, "name"), f"{format_path(('metrics', i, 'name'))}: metric {m['name']!r} fits "
                                                 f"{mcomp.fits.task_text()} runs, not run.task = {task!r} (whose "
                                                 f"model gives {produced})." + self._fitting("metrics", task),
                         related=(task_path,))
        views = data.get("num_views", 1)
        if (isinstance(views, int) and not isinstance(views, bool) and views > 1 and lcomp is not None
                and lcomp.fits.views is False and lcomp.fits.fits_task(task)):
            self.add(("data", "num_views"), f"data.num_views = {views} makes {views} views of every sample, but loss "
                                            f"{loss['name']!r} ignores views (it scores each image alone): set "
                                            "num_views = 1, or use a loss that learns from views."
                     + self._fitting("losses", task, views=True), related=(("loss", "name"),))
        if "mixup" in d and not task_obj.batch_mix:
            mixing = [n for n in self.registry.names("tasks") if getattr(self._task({"task": n}), "batch_mix", False)]
            self.add(("mixup",), f"[mixup] mixes whole batches of images and targets: run.task = {task!r} does not "
                                 f"allow it (tasks that do: {', '.join(mixing) or 'none'}); remove the [mixup] section",
                     at="key", related=(task_path,))
        batch = data.get("batch_size")
        if "mixup" in d and isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 and batch % 2:
            self.add(("data", "batch_size"), f"data.batch_size ({batch}) must be even with [mixup]: it mixes each "
                                             "batch with its reverse in pairs", related=(("mixup",),))
        self.dataset_fit_check(data, task, task_obj)
        self.primary_metric_check(d, run, task, task_obj)

    def dataset_fit_check(self, data: dict[str, Any], task: str, task_obj: Any) -> None:
        """A dataset whose ``Fits.tasks`` declares the targets it yields (``DatasetSplits.task`` words) must yield
        some that ``run.task`` trains on (its ``dataset_tasks``, or its name): a task whose targets the dataset cannot give is refused."""
        ds = data.get("dataset")
        name = ds.get("name") if isinstance(ds, dict) else ds
        comp = self._quiet("datasets", name)
        if comp is None or self._dataset_fits(comp, task, task_obj):
            return
        others = [c.name for c in self.registry.components("datasets")
                  if c.fits.tasks and self._dataset_fits(c, task, task_obj)]
        fitting = f" Datasets that fit: {', '.join(others)}." if others else ""
        self.add(("data", "dataset"), f"data.dataset: dataset {name!r} yields {' or '.join(comp.fits.tasks)} targets, "
                                      f"but run.task = {task!r} needs {self._targets_text(task_obj)} "
                                      f"targets.{fitting}", related=(("run", "task"),))

    @staticmethod
    def _dataset_fits(comp: Any, task: str, task_obj: Any) -> bool:
        words = set(comp.fits.tasks)
        return not words or task in words or bool(words & set(task_obj.dataset_tasks))

    @staticmethod
    def _targets_text(task_obj: Any) -> str:
        return " or ".join(w for w in task_obj.dataset_tasks if w) or "class index"

    def optimizer_checks(self, d: dict[str, Any], trainer: dict[str, Any]) -> None:
        """What the optimizer and the loss declare (``Component.fits``): an optimizer of several passes per step
        (SAM) alone in its step, a ``[loss.optimizer]`` only for a loss with parameters."""
        loss = d.get("loss") if isinstance(d.get("loss"), dict) else {}
        lcomp = self._quiet("losses", loss.get("name"))
        if "optimizer" in loss and lcomp is not None and lcomp.fits.parameters is False:
            self.add(("loss", "optimizer"), f"[loss.optimizer] is set, but loss {loss['name']!r} has no parameters "
                                            "to train: remove [loss.optimizer] (losses that own parameters, such as "
                                            "class centres, are the ones it is for)", at="key",
                     related=(("loss", "name"),))
        opt = d.get("optimizer") if isinstance(d.get("optimizer"), dict) else {}
        ocomp = self._quiet("optimizers", opt.get("name"))
        passes = ocomp.fits.passes if ocomp is not None else None
        if not passes or passes < 2:
            return
        accum = trainer.get("grad_accum", 1)
        clashes = [(("trainer", "grad_accum"), _is_int(accum) and accum > 1, f"trainer.grad_accum = {accum}",
                    "grad_accum = 1"),
                   (("trainer", "precision"), trainer.get("precision") == "fp16", 'trainer.precision = "fp16"',
                    'precision = "bf16" or "fp32"'),
                   (("loss", "optimizer"), "optimizer" in loss, "a [loss.optimizer]", "no [loss.optimizer]")]
        found = [(path, what, fix) for path, cond, what, fix in clashes if cond]
        if found:
            self.add(("optimizer", "name"), f"optimizer.name: optimizer {opt['name']!r} takes {passes} forward/backward "
                                            "passes per step, which cannot be combined with "
                                            f"{', '.join(w for _, w, _ in found)}: use "
                                            f"{', '.join(f for _, _, f in found)}",
                     related=tuple(path for path, _, _ in found))

    def _task(self, run: dict[str, Any], report: bool = False) -> Any:
        """The task ``run.task`` names (the default one when unset), or None: an unknown task is reported where it is
        named, one that cannot be built (or breaks its contract) here when ``report``."""
        name = run.get("task")
        name = name if isinstance(name, str) else default_task_name(self.registry)
        try:
            return get_task(name, registry=self.registry)
        except PlugtrainError as exc:
            if report and self._quiet("tasks", name) is not None:
                self.add(("run", "task"), f"run.task: {exc}")
            return None

    def primary_metric_check(self, d: dict[str, Any], run: dict[str, Any], task: str, task_obj: Any) -> None:
        primary = run.get("primary_metric")
        metrics = d.get("metrics")
        if not isinstance(primary, str) or (metrics is not None and not (
                isinstance(metrics, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                  for m in metrics))):
            return
        names = ([m["name"] for m in metrics] if metrics is not None
                 else default_metrics(task, task_obj, self.registry))
        always = required_metrics(task, task_obj, self.registry)
        names = [n for n in always if n not in names] + names
        if any(self._quiet("metrics", n) is None for n in names):
            return  # an unknown metric is reported where it is named
        keys: list[str] = []
        for n in names:
            key, k = n.split(":")[-1], 2
            while key in keys:
                key, k = f"{n.split(':')[-1]}_{k}", k + 1
            keys.append(key)
        trainer = d.get("trainer") if isinstance(d.get("trainer"), dict) else {}
        known = ["train/loss", "val/loss"] + [f"val/{k}" for k in keys]
        for flag, prefix in (("ema", "val_ema"), ("swa", "val_swa")):
            if trainer.get(flag) is True:
                known += [f"{prefix}/loss"] + [f"{prefix}/{k}" for k in keys]
        if primary not in known:
            self.add(("run", "primary_metric"), f"run.primary_metric = {primary!r} is not a metric of this run."
                     + did_you_mean(primary, known) + f" Known: {', '.join(known)}",
                     related=(("metrics",), ("run", "task"), ("trainer", "ema"), ("trainer", "swa")))

    def schedule_checks(self, d: dict[str, Any], run: dict[str, Any], trainer: dict[str, Any]) -> None:
        """A warmup longer than the whole run (when the run's length is known without the data)."""
        sched = d.get("scheduler") if isinstance(d.get("scheduler"), dict) else {}
        epochs = run.get("epochs", 10)
        if not _is_int(epochs) or epochs < 1:
            return
        w_epochs, w_steps = sched.get("warmup_epochs"), sched.get("warmup_steps")
        if _is_number(w_epochs) and math.isfinite(w_epochs) and w_epochs > epochs and not w_steps:
            self.add(("scheduler", "warmup_epochs"), f"scheduler.warmup_epochs ({w_epochs:g}) is longer than the "
                                                     f"whole run (run.epochs = {epochs}): the learning rate would "
                                                     "never reach its value", related=(("run", "epochs"),))
        cap = trainer.get("max_steps_per_epoch")
        if _is_int(w_steps) and w_steps > 0 and _is_int(cap) and cap > 0 and w_steps > epochs * cap:
            # a warning: trainer.max_steps_per_epoch cuts a run short on purpose (a try, a test), and a warmup meant
            # for the whole run is then longer than what is left of it
            self.add(("scheduler", "warmup_steps"), f"scheduler.warmup_steps ({w_steps}) is longer than the whole "
                                                    f"run (at most run.epochs x trainer.max_steps_per_epoch = "
                                                    f"{epochs * cap} optimizer steps): the learning rate never "
                                                    "reaches its value", warning=True,
                     related=(("run", "epochs"), ("trainer", "max_steps_per_epoch")))

    def pipeline_checks(self, d: dict[str, Any], data: dict[str, Any]) -> None:
        """mean / std that cannot normalise. (A crop larger than the images is the pre-flight's to find: the
        pipeline resizes to image_size after the spec's transforms, so a crop larger than image_size is right for
        sources at least that large; only a real sample says.)"""
        aug = d.get("augmentations") if isinstance(d.get("augmentations"), dict) else {}
        std = aug.get("std")
        for i, x in enumerate(std if isinstance(std, list) else []):
            if _is_number(x) and math.isfinite(x) and x <= 0:  # (non-finite values: the type check's)
                self.add(("augmentations", "std", i), f"augmentations.std[{i}] must be > 0 (images are divided by "
                                                      f"it), got {x!r}")
        self.channel_checks(d, data, aug)

    def channel_checks(self, d: dict[str, Any], data: dict[str, Any], aug: dict[str, Any]) -> None:
        """``augmentations.mean`` / ``std`` with a length that is neither 1 nor the channel count (the dataset's
        ``channels``: a count or a list of indices; else the backbone's ``in_chans``), and ``stats = "train"`` given
        one of them only."""
        channels, source = data.get("channels"), ("data", "channels")
        if channels is None and isinstance(data.get("dataset"), dict):
            channels, source = data["dataset"].get("channels"), ("data", "dataset", "channels")
        count = len(channels) if isinstance(channels, list) else channels
        backbone = d.get("backbone") if isinstance(d.get("backbone"), dict) else {}
        if not _is_int(count):
            count, source = backbone.get("in_chans"), ("backbone", "in_chans")
        if _is_int(count) and count >= 1:
            for key in ("mean", "std"):
                value = aug.get(key)
                if isinstance(value, list) and len(value) not in (1, count):
                    self.add(("augmentations", key), f"augmentations.{key} has {len(value)} value(s) but the images "
                                                     f"have {count} channel(s) ({format_path(source)}): give one "
                                                     "per channel, or one for all", related=(source,))
        if aug.get("stats") == "train" and (aug.get("mean") is None) != (aug.get("std") is None):
            given = "mean" if aug.get("mean") is not None else "std"
            self.add(("augmentations", given), f'augmentations.stats = "train" computes mean and std from the '
                                               f"training split: give neither (or both, as a run's spec.toml records "
                                               f"them), not {given} alone", related=(("augmentations", "stats"),))

    def run_dir_checks(self, run: dict[str, Any]) -> None:
        """``run.output_dir`` / ``run.name`` that no run directory can be made of (checked without writing)."""
        for key in ("output_dir", "name"):
            value = run.get(key)
            if not isinstance(value, str):
                continue
            problem = path_problem(value)
            if problem:
                self.add(("run", key), f"run.{key}: {problem}")
        out = run.get("output_dir", "runs")
        if isinstance(out, str) and not path_problem(out):
            blocker = _file_in_the_way(out)
            if blocker is not None:
                self.add(("run", "output_dir"), f"run.output_dir = {out!r}: {blocker} is a file, not a directory: "
                                                "no run directory can be made under it")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: The longest path most systems take (PATH_MAX), in bytes.
PATH_MAX = 4096


def path_problem(value: str) -> str | None:
    """Why the string ``value`` cannot be a path on this system (a NUL byte, a name or path too long), or None."""
    from plugtrain.core.runtime.rundir import NAME_MAX

    if "\x00" in value:
        return f"{value!r} holds a NUL byte, which no file name can hold"
    if not value.strip():
        return "is empty"
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > PATH_MAX:
        return f"the path is {len(encoded)} bytes long; the system takes at most {PATH_MAX}"
    long = next((p for p in value.replace("\\", "/").split("/") if len(p.encode("utf-8", "surrogateescape"))
                 > NAME_MAX), None)
    if long is not None:
        return f"the name {long[:24]!r}... is {len(long.encode('utf-8', 'surrogateescape'))} bytes long; a file " \
               f"name takes at most {NAME_MAX}"
    return None


def _file_in_the_way(output_dir: str) -> str | None:
    """The existing file (not a directory) that ``output_dir`` is, or lies under; None when there is none."""
    import os
    from pathlib import Path

    p = Path(output_dir)
    for candidate in (p, *p.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else os.fspath(candidate)
        except (OSError, ValueError):
            return None
    return None


def spatial_checks(rules: Any, d: dict[str, Any], data: dict[str, Any]) -> None:
    """The backbone and every transform that declares its ``spatial_dims`` (``Component.fits``) against the
    samples' spatial rank that ``data.image_size`` gives (an int: 2-D images; a list: its length): a 2-D model or
    transform on volumes, or a 3-D one on images, is refused where it is named."""
    from plugtrain.core.spec.model import spatial_rank

    rank = spatial_rank(data.get("image_size"))
    if rank is None:
        return
    words = {1: "1-D signals", 2: "2-D images", 3: "3-D volumes"}

    def check(path: tuple[Any, ...], kind: str, name: Any, what: str) -> None:
        comp = rules._quiet(kind, name)
        dims = comp.fits.spatial_dims if comp is not None else ()
        if not dims or rank in dims:
            return
        fitting = [c.name for c in rules.registry.components(kind) if rank in c.fits.spatial_dims][:6]
        hint = f" {what.capitalize()}s for {rank}-D data: {', '.join(fitting)}, ..." if fitting else (
            f" No loaded plugin has a {what} for {rank}-D data: install one that does.")
        rules.add(path, f"{format_path(path)}: {what} {name!r} takes "
                       f"{' or '.join(words.get(x, f'{x}-D samples') for x in dims)}, but data.image_size = "
                       f"{data.get('image_size')!r} gives {words[rank]}.{hint}", related=(("data", "image_size"),))

    backbone = d.get("backbone") if isinstance(d.get("backbone"), dict) else {}
    check(("backbone", "name"), "backbones", backbone.get("name"), "backbone")
    dims = backbone.get("spatial_dims")  # a backbone of any rank takes it as this parameter, by convention
    if _is_int(dims) and dims in words and dims != rank:
        rules.add(("backbone", "spatial_dims"), f"backbone.spatial_dims = {dims} builds a model for "
                                               f"{words[dims]}, but data.image_size = "
                                               f"{data.get('image_size')!r} gives {words[rank]}",
                 related=(("data", "image_size"),))
    aug = d.get("augmentations") if isinstance(d.get("augmentations"), dict) else {}

    def walk(items: Any, path: tuple[Any, ...]) -> None:
        for i, a in enumerate(items if isinstance(items, list) else []):
            if isinstance(a, dict):
                check((*path, i, "name"), "augmentations", a.get("name"), "transform")
                walk(a.get("transforms"), (*path, i, "transforms"))

    for split in ("train", "val"):
        walk(aug.get(split), ("augmentations", split))
