"""Validate a composed spec dict against the spec model and the registered components' signatures.

:func:`validate` never stops at the first mistake: it returns every :class:`Problem`, each with the key path it is
about, so that the loader can point at the file, line and column (or the ``--set`` override) the value came from.
Nothing is built: a component's parameters are checked against its factory's signature (names, annotations,
required parameters), plus a few range rules on well-known parameter names, plus the plugin's own check where its
module has a ``PLUGTRAIN_VALIDATE`` (see :mod:`plugtrain.core.hookspecs`). Only the kinds that the spec names are
loaded.

The checks are split by what they own:

- :class:`Validator` (here): the document's sections and the keys of the plain ones;
- :class:`~plugtrain.core.spec.components_check.ComponentChecks`: each component table (name, parameters, nested
  components, the plugin's own check);
- :class:`~plugtrain.core.spec.rules.CrossRules`: the rules on combinations of keys across sections;
- :mod:`plugtrain.core.spec.fields`: the range rules and section fields they share (importable from here too).
"""

from __future__ import annotations

from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.spec import model
from plugtrain.core.spec.components_check import ComponentChecks, param_markers
from plugtrain.core.spec.fields import (
    FRACTION,
    NON_NEGATIVE,
    PARAM_RANGES,
    POSITIVE,
    PROBABILITY,
    Range,
    _where,
    describe_value,
    field_range,
    field_type,
    section_fields,
)
from plugtrain.core.spec.model import REQUIRED_SECTIONS, SECTIONS
from plugtrain.core.spec.retired import collect
from plugtrain.core.spec.rules import PATH_MAX, CrossRules, path_problem
from plugtrain.core.spec.tomlpos import format_path
from plugtrain.core.spec.typecheck import T, describe, matches, mismatch

__all__ = [
    "FRACTION", "NON_NEGATIVE", "PARAM_RANGES", "PATH_MAX", "POSITIVE", "PROBABILITY", "Problem", "Range", "Validator",
    "describe_value", "field_range", "field_type", "param_markers", "path_problem", "section_fields", "validate",
]


@attrs.define
class Problem:
    """One mistake: the key path it is about, the message, and whether to point at the key or at its value."""

    path: tuple
    message: str
    at: str = "value"  # "key" | "value"
    warning: bool = False
    related: tuple = ()  # other key paths that take part (a combination): an override among them is named


# keys of the plain sections, to say where a misplaced key belongs
_PLAIN_SECTIONS = {sec: cls for sec, (cls, kind) in SECTIONS.items() if kind is None or sec == "data"}


def _belongs(key: str, here: str) -> str:
    homes = [sec for sec, cls in _PLAIN_SECTIONS.items()
             if sec != here and key in section_fields(cls) and key not in ("name", "dataset")]
    homes += [sec for sec in ("optimizer", "scheduler") if sec != here and key in section_fields(SECTIONS[sec][0])
              and key != "name"]
    return f" {key!r} belongs in [{homes[0]}]." if homes else ""


class Validator:
    """Checks one composed spec dict; ``problems`` collects every mistake found.

    It walks the sections and checks the plain ones' keys itself; it hands each component table to
    :class:`ComponentChecks` and, last, the whole dict to :class:`CrossRules`."""

    def __init__(self, registry: Any = None) -> None:
        if registry is None:  # the catalog: what checking needs, without importing every plugin's libraries
            from plugtrain.core.catalog import get_catalog

            registry = get_catalog()
        self.registry = registry
        self.problems: list[Problem] = []
        self._retired: dict[str, dict[str, str]] | None = None
        self.components = ComponentChecks(self)
        self.rules = CrossRules(self)

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
        self.components.set_task(d)  # the run.task that an unknown component name's did-you-mean prefers
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
                    self.components.component(kind, item, (*path, i), cls)
            elif not isinstance(value, dict):
                self.add(path, f"[{sec}] must be a table, got {describe_value(value)}")
            elif sec == "augmentations":
                self.augmentations(value, path)
            elif sec == "task":
                self.task_params(d, value, path)
            elif sec == "data":
                self.components.component(kind, value, path, cls, name_key="dataset")
            elif kind is not None:
                self.components.component(kind, value, path, cls)
            else:
                self.plain(cls, value, path)
        self.rules.check(d)
        return self.problems

    def task_params(self, d: dict[str, Any], value: dict[str, Any], path: tuple) -> None:
        """``[task]``: the parameters of the task ``run.task`` names (the default task when unset), checked against
        its factory like any component's; an unknown ``run.task`` is reported where it is written."""
        if "name" in value:
            self.add((*path, "name"), "[task] holds the task's parameters; the task itself is named by run.task",
                     at="key")
            return
        run = d.get("run") if isinstance(d.get("run"), dict) else {}
        name = run.get("task")
        if name is None:
            from plugtrain.core.task import default_task_name

            name = default_task_name(self.registry)
        if not isinstance(name, str):
            return
        try:
            self.registry.get("tasks", name)
        except PlugtrainError:
            return
        self.components.component("tasks", {"name": name, **value}, path, model.TaskSection, name_path=("run", "task"))

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
                self.components.component("augmentations", item, (*path, split, i), model.AugmentationSpec)


def validate(d: dict[str, Any], registry: Any = None) -> list[Problem]:
    """Every problem in the composed spec dict ``d`` (see :class:`Problem`)."""
    return Validator(registry).validate(d)
