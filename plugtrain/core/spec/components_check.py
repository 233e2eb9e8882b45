"""The checks of one component table: its name, its parameters against the factory's signature, the components
named inside it, and the plugin's own ``PLUGTRAIN_VALIDATE``.

:class:`ComponentChecks` owns these; the section walking that finds the component tables stays in
:class:`plugtrain.core.spec.validate.Validator`, which it reports to (the one list of problems, in the order found).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import TYPE_CHECKING, Any

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.hookspecs import CONTEXT, SINGULAR
from plugtrain.core.runtime.rundir import InsideRunDir, check_context, run_path_problem, takes_context
from plugtrain.core.spec import model
from plugtrain.core.spec.fields import PARAM_RANGES, _where, describe_value, section_fields
from plugtrain.core.spec.retired import retired_hint
from plugtrain.core.spec.tomlpos import format_path
from plugtrain.core.spec.typecheck import describe, from_annotation, toml_view

if TYPE_CHECKING:
    from plugtrain.core.spec.validate import Validator


class ComponentChecks:
    """Checks the component tables a :class:`~plugtrain.core.spec.validate.Validator` hands it: the name, every
    parameter (type, range, run-directory paths), required parameters, nested components (a wrapper's ``base``),
    ``transforms`` of the augmentations that hold others, and the plugin's own check. Problems go to the validator."""

    _ns_cache: dict[int, dict[str, Any]] = {}

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self.task: str | None = None  # the spec's run.task when it names a known task: what did-you-means prefer
        self.registry = validator.registry
        self.problems = validator.problems  # the validator's own list: one order for every problem
        self.add = validator.add
        self.check_value = validator.check_value
        self.field = validator.field

    @property
    def retired(self) -> dict[str, dict[str, str]]:
        return self.validator.retired

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
            hint = ""
            if isinstance(name, dict) and isinstance(name.get("name"), str):  # dataset = { name = ..., root = ... }
                rest = ", ".join(f"{k} = ..." for k in name if k != "name")
                hint = (f'; write {name_key} = "{name["name"]}"' + (f" and put its parameters ({rest}) beside it in "
                                                                   f"[{path[0]}]" if rest else ""))
            self.add(npath, f"{format_path(npath)}: expected the name of a {singular} "
                            f"(a string), got {describe_value(name)}{hint}")
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
                    what = describe(self.param_type(comp, p))
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
            if _same_factory(target, comp):
                self.add(name_path, f"{format_path(name_path)}: {SINGULAR[kind]} {comp.name!r} cannot wrap "
                                    f"{inner_name!r} (itself): pick another {p.name}")
            elif (target.fits.passes or 1) > 1 and comp.fits.passes != target.fits.passes:
                self.add(name_path, f"{format_path(name_path)}: {SINGULAR[kind]} {comp.name!r} cannot wrap "
                                    f"{inner_name!r}, which takes {target.fits.passes} passes per step: name "
                                    f"{inner_name!r} as the {SINGULAR[kind]} and {comp.name!r} as its {p.name}")

    def set_task(self, d: dict[str, Any]) -> None:
        """Remember the task of the spec ``d`` (``run.task``, else the default task) when it is a known one, so that
        an unknown component name is answered with the components that fit that task (see ``Lookup.suggest``)."""
        run = d.get("run") if isinstance(d.get("run"), dict) else {}
        name = run.get("task")
        self.task = None
        try:
            if name is None:
                from plugtrain.core.task import default_task_name

                name = default_task_name(self.registry)
            if isinstance(name, str):
                self.registry.get("tasks", name)
                self.task = name
        except PlugtrainError:  # an unknown or absent task: reported elsewhere; suggest among every component
            pass

    def lookup(self, kind: str, name: str, path: tuple) -> Any:
        try:
            return self.registry.get(kind, name, task=self.task if kind != "tasks" else None)
        except PlugtrainError as exc:
            hint = retired_hint(self.retired, kind, name.rpartition(":")[2])
            msg = str(exc)
            if hint:
                msg = f"unknown {SINGULAR[kind]} {name!r}: {hint}. Run `plugtrain list {kind}` to see them all."
            self.add(path, f"{format_path(path)}: {msg}")
            return None

    def namespace(self, comp: Any) -> dict[str, Any]:
        from plugtrain.core.spec.typecheck import factory_namespace

        key = id(comp.factory)
        if key not in self._ns_cache:
            self._ns_cache[key] = factory_namespace(comp.factory)
        return self._ns_cache[key]

    def param_type(self, comp: Any, p: Any) -> Any:
        """The checked type of parameter ``p``: stored by the catalog, else read from the factory's annotation."""
        if getattr(p, "toml_type", None) is not None:
            return p.toml_type
        return toml_view(from_annotation(p.annotation, self.namespace(comp)))

    def param(self, kind: str, comp: Any, p: Any, value: Any, path: tuple) -> None:
        t = self.param_type(comp, p)
        if t.kind == "never":
            ann = p.annotation_str or "an object"
            self.add(path, f"{format_path(path)}: {SINGULAR[kind]} {comp.name!r} takes {ann} here, which a TOML spec "
                           "cannot express; leave it out")
            return
        if not self.check_value(path, value, t, PARAM_RANGES.get(kind, {}).get(p.name)):
            return
        stored = getattr(p, "toml_type", None) is not None  # from the catalog, which keeps the markers on p
        markers = [InsideRunDir(w) for w in p.run_paths] if stored else param_markers(comp.factory).get(p.name, ())
        for marker in markers:
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
        """Run the ``PLUGTRAIN_VALIDATE`` of the plugin module that provides ``comp``, when it has one; one that takes
        a ``context`` gets the :class:`~plugtrain.core.runtime.rundir.CheckContext` of this check."""
        plugin = getattr(self.registry, "plugin", None)
        info = plugin(comp.plugin) if callable(plugin) else None
        if getattr(info, "has_validate", True) is False:  # the catalog knows: do not import the plugin to look
            return

        def verdict() -> list[tuple[Any, str, bool]] | None:
            check = getattr(getattr(info, "module", None), "PLUGTRAIN_VALIDATE", None)
            if not callable(check):
                return None
            defaults = {p.name: p.default for p in comp.params if not p.required}
            extra = {"context": check_context()} if takes_context(check) else {}
            return [(key, str(message), bool(warning))
                    for key, message, warning in check(comp.factory, dict(given), defaults, **extra) or ()]

        remember = getattr(self.registry, "remember", None)
        memo_key = _verdict_key(comp, given) if getattr(info, "validate_memo", False) and callable(remember) else None
        try:  # a pure validator's verdict is stored by the catalog: the plugin and its library stay unimported
            found = remember("verdicts", memo_key, verdict) if memo_key is not None else verdict()
        except Exception:  # a plugin's check failing oddly must not break checking
            return
        for key, message, warning in found or ():
            if key is None:
                self.add(path, f"{label}: {message}", warning=warning)
            else:
                where = (*path, key)
                self.add(where, f"{format_path(where)}: {message}", warning=warning)


def _verdict_key(comp: Any, given: dict[str, Any]) -> str | None:
    """What a pure validator's verdict on ``comp`` with the spec's ``given`` parameters is stored under (None when
    a value has no exact JSON form: then it is not stored)."""
    import json

    try:
        return json.dumps([comp.kind, comp.plugin, comp.name, given], sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None


def _same_factory(a: Any, b: Any) -> bool:
    """Whether components ``a`` and ``b`` are built by the same function (the catalog compares stored names)."""
    if getattr(a, "factory_key", None) and getattr(b, "factory_key", None):
        return a.factory_key == b.factory_key
    a, b = a.factory, b.factory
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

