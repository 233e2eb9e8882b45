"""Validate a composed spec dict against the spec model and the registered components' signatures.

:func:`validate` never stops at the first mistake: it returns every :class:`Problem`, each with the key path it is
about, so that the loader can point at the file, line and column (or the ``--set`` override) the value came from.
Nothing is built: a component's parameters are checked against its factory's signature (names, annotations,
required parameters), plus a few range rules on well-known parameter names, plus the plugin's own check where its
module has a ``PLUGTRAIN_VALIDATE`` (see :mod:`plugtrain.core.hookspecs`). Only the kinds that the spec names are
loaded.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.hookspecs import CONTEXT, SINGULAR
from plugtrain.core.registry import TASK_OUTPUTS
from plugtrain.core.runtime.rundir import InsideRunDir, run_path_problem
from plugtrain.core.spec import model
from plugtrain.core.spec.model import REQUIRED_SECTIONS, SECTIONS
from plugtrain.core.spec.retired import collect, retired_hint
from plugtrain.core.spec.tomlpos import format_path
from plugtrain.core.spec.typecheck import T, describe, from_annotation, matches, mismatch, toml_view


@attrs.define
class Problem:
    """One mistake: the key path it is about, the message, and whether to point at the key or at its value."""

    path: tuple
    message: str
    at: str = "value"  # "key" | "value"
    warning: bool = False
    related: tuple = ()  # other key paths that take part (a combination): an override among them is named


# -- range rules -----------------------------------------------------------------------------------------------------


@attrs.frozen
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):  # a range means a finite number: nan and inf are refused
            return False
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.lo is not None:
            out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)

#: Range rules for component parameters, by kind and parameter name (any component of the kind that has it).
PARAM_RANGES: dict[str, dict[str, Range]] = {
    "optimizers": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "momentum": NON_NEGATIVE, "eps": POSITIVE,
                   "dampening": NON_NEGATIVE},
    "augmentations": {"p": PROBABILITY},
    "losses": {"label_smoothing": PROBABILITY, "margin": NON_NEGATIVE},
    "backbones": {"drop_rate": FRACTION, "drop_path_rate": FRACTION, "in_chans": Range(1)},
    "datasets": {"val_fraction": Range(0, 1, lo_open=True, hi_open=True),
                 "test_fraction": Range(0, 1, hi_open=True)},
    "schedulers": {"warmup_epochs": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "eta_min": NON_NEGATIVE,
                   "gamma": POSITIVE, "step_size": Range(1), "patience": NON_NEGATIVE, "T_max": Range(1)},
    "callbacks": {"patience": Range(1), "min_delta": NON_NEGATIVE},
}

#: Ranges of the model's own section fields, from their attrs validators (``_positive`` / ``_non_negative``).
_VALIDATOR_RANGES = {"_positive": POSITIVE, "_non_negative": NON_NEGATIVE}


def field_range(field: attrs.Attribute) -> Range | None:
    """The range an attrs field's validator enforces, when it is one of the model's range validators."""
    validator = field.validator
    name = getattr(validator, "__name__", "")
    if name in _VALIDATOR_RANGES:
        return _VALIDATOR_RANGES[name]
    if isinstance(validator, model._Between):
        return Range(validator.lo, validator.hi)
    return None


# -- the model's own fields ------------------------------------------------------------------------------------------

_MODEL_NS = vars(model)
_COMPONENT_FIELDS = {"params", "transforms"}


def section_fields(cls: type) -> dict[str, attrs.Attribute]:
    """The user-facing fields of a section class (``params`` and ``transforms`` are not keys)."""
    return {a.name: a for a in attrs.fields(cls) if a.name not in _COMPONENT_FIELDS}


def field_type(field: attrs.Attribute) -> T:
    return toml_view(from_annotation(field.type, _MODEL_NS))


# keys of the plain sections, to say where a misplaced key belongs
_PLAIN_SECTIONS = {sec: cls for sec, (cls, kind) in SECTIONS.items() if kind is None or sec == "data"}


def _belongs(key: str, here: str) -> str:
    homes = [sec for sec, cls in _PLAIN_SECTIONS.items()
             if sec != here and key in section_fields(cls) and key not in ("name", "dataset")]
    homes += [sec for sec in ("optimizer", "scheduler") if sec != here and key in section_fields(SECTIONS[sec][0])
              and key != "name"]
    return f" {key!r} belongs in [{homes[0]}]." if homes else ""


class Validator:
    """Checks one composed spec dict; ``problems`` collects every mistake found."""

    def __init__(self, registry: Any = None) -> None:
        if registry is None:
            from plugtrain.core.registry import get_registry

            registry = get_registry()
        self.registry = registry
        self.problems: list[Problem] = []
        self._retired: dict[str, dict[str, str]] | None = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def add(self, path: tuple, message: str, at: str = "value", warning: bool = False, related: tuple = ()) -> None:
        self.problems.append(Problem(tuple(path), message, at, warning, tuple(tuple(r) for r in related)))

    @property
    def retired(self) -> dict[str, dict[str, str]]:
        if self._retired is None:
            self._retired = collect(self.registry.plugins)
        return self._retired

    def check_value(self, path: tuple, value: Any, t: T, rng: Range | None = None, label: str = "") -> bool:
        label = label or format_path(path)
        if not matches(value, t):
            self.add(path, f"{label}: {mismatch(value, t)}")
            return False
        if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and not rng.ok(value):
            self.add(path, f"{label} must be {rng.text()}, got {value!r}")
            return False
        return True

    # -- the document --------------------------------------------------------------------------------------------
    def validate(self, d: dict[str, Any]) -> list[Problem]:
        for key in d:
            if key not in SECTIONS:
                hint = did_you_mean(key, SECTIONS) or _belongs(key, "")
                self.add((key,), f"unknown section [{key}].{hint} Sections: {', '.join(SECTIONS)}.", at="key")
        for sec in REQUIRED_SECTIONS:
            if sec not in d:
                self.add((), f"missing required section [{sec}]")
        for sec, (cls, kind) in SECTIONS.items():
            if sec not in d:
                continue
            value = d[sec]
            path = (sec,)
            if sec in ("loggers", "metrics", "callbacks"):
                if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
                    self.add(path, f"{sec} must be an array of tables: write [[{sec}]] blocks, each with a name, "
                                   f"or {sec} = [{{ name = \"...\" }}]")
                    continue
                for i, item in enumerate(value):
                    self.component(kind, item, (*path, i), cls)
            elif not isinstance(value, dict):
                self.add(path, f"[{sec}] must be a table, got {describe_value(value)}")
            elif sec == "augmentations":
                self.augmentations(value, path)
            elif sec == "data":
                self.component(kind, value, path, cls, name_key="dataset")
            elif kind is not None:
                self.component(kind, value, path, cls)
            else:
                self.plain(cls, value, path)
        self.cross_checks(d)
        return self.problems

    def cross_checks(self, d: dict[str, Any]) -> None:
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
        self.schedule_checks(d, run, trainer)
        self.pipeline_checks(d, data)
        self.run_dir_checks(run)
        batch, m = data.get("batch_size"), data.get("m_per_class", 4)
        if (data.get("sampler") == "m_per_class" and isinstance(batch, int) and isinstance(m, int)
                and not isinstance(batch, bool) and not isinstance(m, bool) and batch >= 1 and m >= 1
                and batch % m):
            self.add(("data", "batch_size"),
                     f"data.batch_size ({batch}) must be a multiple of data.m_per_class ({m}) with sampler = "
                     "'m_per_class': every batch (on every process) holds whole groups of m samples of a class",
                     related=(("data", "m_per_class"), ("data", "sampler")))

    # -- combinations that cannot train ------------------------------------------------------------------------
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
        task = run.get("task", "classification")
        if task not in model.TASKS:
            return  # reported with run.task
        produced = TASK_OUTPUTS.get(task, "outputs")
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
        if "mixup" in d and task != "classification":
            self.add(("mixup",), f"[mixup] mixes class labels: it works for classification runs only, not run.task = "
                                 f"{task!r}; remove the [mixup] section", at="key", related=(task_path,))
        batch = data.get("batch_size")
        if "mixup" in d and isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 and batch % 2:
            self.add(("data", "batch_size"), f"data.batch_size ({batch}) must be even with [mixup]: it mixes each "
                                             "batch with its reverse in pairs", related=(("mixup",),))
        self.primary_metric_check(d, run, task)

    def primary_metric_check(self, d: dict[str, Any], run: dict[str, Any], task: str) -> None:
        primary = run.get("primary_metric")
        metrics = d.get("metrics")
        if not isinstance(primary, str) or (metrics is not None and not (
                isinstance(metrics, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                  for m in metrics))):
            return
        names = [m["name"] for m in metrics] if metrics is not None else list(model.DEFAULT_METRICS[task])
        always = [self.registry.spec_name(c) for c in self.registry.role_components("metrics", f"always:{task}")]
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

    # -- plain sections ------------------------------------------------------------------------------------------
    def plain(self, cls: type, d: dict[str, Any], path: tuple, skip: tuple[str, ...] = ()) -> None:
        """Check a plain section's keys; keys in ``skip`` are the caller's to check (still known, for hints)."""
        known = section_fields(cls)
        fields = {k: f for k, f in known.items() if k not in skip}
        where = _where(path)
        for key, value in d.items():
            if key in skip:
                continue
            if key not in fields:
                hint = did_you_mean(key, known) or _belongs(key, path[0] if path else "")
                listing = f" Keys: {', '.join(known)}." if not hint else ""
                self.add((*path, key), f"unknown key {key!r} in {where}.{hint}{listing}", at="key")
                continue
            self.field(fields[key], value, (*path, key))
        for key, f in fields.items():
            if f.default is attrs.NOTHING and key not in d:
                self.add(path, f"{where} is missing required key {key!r} ({describe(field_type(f))})")

    def field(self, f: attrs.Attribute, value: Any, path: tuple) -> None:
        if not self.check_value(path, value, field_type(f), field_range(f)):
            return
        if f.validator is not None:
            try:
                f.validator(None, f, value)
            except (ValueError, TypeError) as exc:
                self.add(path, f"{format_path(path)}: {exc}")

    def augmentations(self, d: dict[str, Any], path: tuple) -> None:
        self.plain(model.AugmentationsSection, d, path, skip=("train", "val"))
        for split in ("train", "val"):
            if split not in d:
                continue
            items = d[split]
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                self.add((*path, split), f"augmentations.{split} must be an array of tables, e.g. "
                                         f"{split} = [{{ name = \"HorizontalFlip\", p = 0.5 }}]")
                continue
            for i, item in enumerate(items):
                self.component("augmentations", item, (*path, split, i), model.AugmentationSpec)

    # -- component sections --------------------------------------------------------------------------------------
    def component(self, kind: str, d: dict[str, Any], path: tuple, cls: type, name_key: str = "name",
                  name_path: tuple | None = None, implied: tuple[str, ...] = ()) -> None:
        """A table that names a component of ``kind`` with ``name_key`` and gives its parameters beside.

        ``name_path`` is where the name sits when it is not ``path + (name_key,)`` (a wrapper's ``base``, whose
        parameters are its ``base_params``); ``implied`` are parameters the caller supplies (not required here)."""
        where = _where(path)
        singular = SINGULAR[kind]
        own = {k: f for k, f in section_fields(cls).items() if k not in ("name", name_key)}
        comp = None
        name = d.get(name_key)
        npath = name_path if name_path is not None else (*path, name_key)
        if name_key not in d:
            self.add(path, f"{where} is missing {name_key!r}: which {singular}? "
                           f"Run `plugtrain list {kind}` to see them all.")
        elif not isinstance(name, str):
            self.add(npath, f"{format_path(npath)}: expected the name of a {singular} "
                            f"(a string), got {describe_value(name)}")
        else:
            comp = self.lookup(kind, name, npath)
        label = f"{where} ({singular} {name!r})" if comp is not None else where
        params = {p.name: p for p in comp.params} if comp is not None else {}
        context = CONTEXT.get(kind, frozenset())
        given: dict[str, Any] = {}
        for key, value in d.items():
            kpath = (*path, key)
            if key == name_key:
                continue
            if key in own:
                if cls is model.LossSection and key == "optimizer":
                    if not isinstance(value, dict):
                        self.add(kpath, f"{format_path(kpath)} must be a table naming an optimizer, e.g. "
                                        '[loss.optimizer] name = "SGD"')
                    else:
                        self.component("optimizers", value, kpath, model.ComponentSpec)
                    continue
                self.field(own[key], value, kpath)
                continue
            if comp is None:  # unknown component: its parameters cannot be checked, but typos of own keys can
                hint = did_you_mean(key, own) if name_key != "name" or own else ""
                if hint:
                    self.add(kpath, f"unknown key {key!r} in {where}.{hint}", at="key")
                continue
            if key in params:
                given[key] = value
                if key == "transforms" and kind == "augmentations":
                    self.transforms(value, kpath)
                    continue
                self.param(kind, comp, params[key], value, kpath)
                continue
            if key in context:
                self.add(kpath, f"{format_path(kpath)}: {key!r} is supplied to every {singular} by plugtrain at run "
                                "time and cannot be set in a spec", at="key")
                continue
            if comp.accepts_any_kwargs:
                given[key] = value
                continue
            hint = retired_hint(self.retired, kind, comp.name, key)
            accepted = [*own, *params]
            msg = f"unknown key {key!r} in {label}."
            msg += f" {hint}." if hint else did_you_mean(key, accepted)
            msg += f" Accepted: {', '.join(accepted) or '(no parameters)'}." if not hint or accepted else ""
            self.add(kpath, msg, at="key")
        if comp is None:
            return
        self.nested(kind, comp, d, path)
        for p in comp.params:
            if p.required and p.name not in d and p.name not in own and p.name not in implied:
                if kind == "augmentations" and p.name == "transforms":
                    what = 'an array of augmentation tables, e.g. transforms = [{ name = "HorizontalFlip" }]'
                else:
                    what = describe(toml_view(from_annotation(p.annotation, self.namespace(comp))))
                self.add(path, f"{label} is missing required parameter {p.name!r} ({what})")
        if not any(pr.path[: len(path)] == path and not pr.warning for pr in self.problems):
            self.plugin_checks(comp, given, path, label)

    def nested(self, kind: str, comp: Any, d: dict[str, Any], path: tuple) -> None:
        """Components named inside a component, checked exactly like a top-level one.

        The convention: a parameter ``NAME`` (a string) next to a parameter ``NAME_params`` (a table) names another
        component of the same kind and gives its parameters (``base`` / ``base_params`` of the wrapper optimizers
        LookAhead and SAM); a parameter ``lr`` of the wrapper is a shortcut for ``NAME_params.lr``."""
        params = {p.name: p for p in comp.params}
        for p in comp.params:
            holder = params.get(f"{p.name}_params")
            if holder is None:
                continue
            inner_name = d.get(p.name, p.default)
            inner = d.get(holder.name)
            if not isinstance(inner_name, str) or (inner is not None and not isinstance(inner, dict)):
                continue  # a wrong type, reported with the parameter
            inner = dict(inner or {})
            name_path = (*path, p.name) if p.name in d else path
            ppath = (*path, holder.name)
            if "name" in inner:
                self.add((*ppath, "name"), f"{format_path((*ppath, 'name'))}: the {SINGULAR[kind]} is named by "
                                           f"{format_path((*path, p.name))}, not inside {holder.name}", at="key")
                inner.pop("name")
            before = len(self.problems)
            implied = ("lr",) if "lr" in d and "lr" in params else ()
            self.component(kind, {"name": inner_name, **inner}, ppath, model.ComponentSpec, name_path=name_path,
                           implied=implied)
            for pr in self.problems[before:]:
                if pr.path == name_path and p.name not in d:  # a default that does not resolve: say whose
                    pr.message += f" (the default {p.name} of {SINGULAR[kind]} {comp.name!r})"
            if not isinstance(inner_name, str):
                continue
            try:
                target = self.registry.get(kind, inner_name)
            except PlugtrainError:
                continue
            if _same_factory(target.factory, comp.factory):
                self.add(name_path, f"{format_path(name_path)}: {SINGULAR[kind]} {comp.name!r} cannot wrap "
                                    f"{inner_name!r} (itself): pick another {p.name}")

    def lookup(self, kind: str, name: str, path: tuple) -> Any:
        try:
            return self.registry.get(kind, name)
        except PlugtrainError as exc:
            hint = retired_hint(self.retired, kind, name.rpartition(":")[2])
            msg = str(exc)
            if hint:
                msg = f"unknown {SINGULAR[kind]} {name!r}: {hint}. Run `plugtrain list {kind}` to see them all."
            self.add(path, f"{format_path(path)}: {msg}")
            return None

    _ns_cache: dict[int, dict[str, Any]] = {}

    def namespace(self, comp: Any) -> dict[str, Any]:
        from plugtrain.core.spec.typecheck import factory_namespace

        key = id(comp.factory)
        if key not in self._ns_cache:
            self._ns_cache[key] = factory_namespace(comp.factory)
        return self._ns_cache[key]

    def param(self, kind: str, comp: Any, p: Any, value: Any, path: tuple) -> None:
        t = toml_view(from_annotation(p.annotation, self.namespace(comp)))
        if t.kind == "never":
            ann = p.annotation_str or "an object"
            self.add(path, f"{format_path(path)}: {SINGULAR[kind]} {comp.name!r} takes {ann} here, which a TOML spec "
                           "cannot express; leave it out")
            return
        if not self.check_value(path, value, t, PARAM_RANGES.get(kind, {}).get(p.name)):
            return
        for marker in param_markers(comp.factory).get(p.name, ()):
            if isinstance(marker, InsideRunDir) and isinstance(value, str):
                problem = run_path_problem(value)
                if problem is not None:
                    self.add(path, f"{format_path(path)}: {problem} ({SINGULAR[kind]} {comp.name!r} writes "
                                   f"{marker.what})")

    def transforms(self, value: Any, path: tuple) -> None:
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            self.add(path, f"{format_path(path)} must be an array of augmentation tables, e.g. "
                           'transforms = [{ name = "HorizontalFlip" }, { name = "VerticalFlip" }]')
            return
        for i, item in enumerate(value):
            self.component("augmentations", item, (*path, i), model.AugmentationSpec)

    # -- the plugin's own checks --------------------------------------------------------------------------------
    def plugin_checks(self, comp: Any, given: dict[str, Any], path: tuple, label: str) -> None:
        """Run the ``PLUGTRAIN_VALIDATE`` of the plugin module that provides ``comp``, when it has one."""
        plugin = getattr(self.registry, "plugin", None)
        info = plugin(comp.plugin) if callable(plugin) else None
        check = getattr(getattr(info, "module", None), "PLUGTRAIN_VALIDATE", None)
        if not callable(check):
            return
        defaults = {p.name: p.default for p in comp.params if not p.required}
        try:
            found = [(key, str(message), bool(warning))
                     for key, message, warning in check(comp.factory, dict(given), defaults) or ()]
        except Exception:  # a plugin's check failing oddly must not break checking
            return
        for key, message, warning in found:
            if key is None:
                self.add(path, f"{label}: {message}", warning=warning)
            else:
                where = (*path, key)
                self.add(where, f"{format_path(where)}: {message}", warning=warning)


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


def _same_factory(a: Any, b: Any) -> bool:
    unwrap = lambda f: f.func if isinstance(f, functools.partial) else f  # noqa: E731
    return unwrap(a) is unwrap(b)


_MARKERS: dict[int, dict[str, tuple[Any, ...]]] = {}


def param_markers(factory: Any) -> dict[str, tuple[Any, ...]]:
    """``{parameter: (metadata, ...)}`` of the factory's ``typing.Annotated`` parameters (``RunPath`` and others),
    looking into ``X | None`` too."""
    key = id(factory)
    if key in _MARKERS:
        return _MARKERS[key]
    target = factory
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isclass(target):
        target = target.__init__
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable string annotations: look the bare names up in the factory's module
        from plugtrain.core.spec.typecheck import factory_namespace

        ns = factory_namespace(factory)
        try:
            raw = inspect.signature(target).parameters
        except (TypeError, ValueError):
            raw = {}
        hints = {n: ns.get(p.annotation.strip()) for n, p in raw.items()
                 if isinstance(p.annotation, str) and p.annotation.strip().isidentifier()}
    out: dict[str, tuple[Any, ...]] = {}
    for name, hint in hints.items():
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        meta = tuple(m for h in members if typing.get_origin(h) is typing.Annotated for m in h.__metadata__)
        if meta:
            out[name] = meta
    _MARKERS[key] = out
    return out


def _where(path: tuple) -> str:
    return f"[{path[0]}]" if len(path) == 1 else format_path(path)


def describe_value(value: Any) -> str:
    from plugtrain.core.spec.typecheck import toml_literal, value_kind

    shown = toml_literal(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({value_kind(value)})"


def validate(d: dict[str, Any], registry: Any = None) -> list[Problem]:
    """Every problem in the composed spec dict ``d`` (see :class:`Problem`)."""
    return Validator(registry).validate(d)
