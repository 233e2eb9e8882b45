"""The questions every component source answers alike: find, get by name (with its did-you-mean), roles.

:class:`Lookup` is shared by the live :class:`~plugtrain.core.registry.Registry` and the cached
:class:`~plugtrain.core.catalog.Catalog`, so that both give the same answers and the same messages. A subclass
provides ``plugins`` (a list of plugin records with ``name``, ``error``, ``disabled``, ``module``, ``hooks`` and
``dist_label``) and ``_loaded(kind)``: every component of the kind, runtime-only ones included, in registration order.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.hookspecs import KINDS, ROLES, RUNTIME_ROLES, SINGULAR, hook_name


class Lookup:
    """Component queries on top of ``plugins`` and ``_loaded(kind)``."""

    plugins: list[Any]

    def _loaded(self, kind: str) -> list[Any]:
        raise NotImplementedError

    def plugin(self, name: str) -> Any | None:
        return next((p for p in self.plugins if p.name == name), None)

    def components(self, kind: str) -> list[Any]:
        """Every component of ``kind`` a spec can name, from every plugin, calling each plugin's hook the first time.

        Runtime-only components (:attr:`Component.runtime_only`) are left out: only :meth:`with_role` finds them."""
        return [c for c in self._loaded(check_kind(kind)) if not c.runtime_only]


    def all_components(self) -> list[Any]:
        """Every component of every kind (calls every hook: errors in any of them are then known)."""
        return [c for kind in KINDS for c in self.components(kind)]

    def names(self, kind: str) -> list[str]:
        return sorted({c.name for c in self.components(kind)}, key=str.lower)

    def find(self, kind: str, pattern: str | None = None) -> list[Any]:
        """Components of ``kind`` whose name matches the case-insensitive glob ``pattern``."""
        comps = self.components(kind)
        if pattern:
            pat = pattern.lower()
            comps = [c for c in comps if fnmatch.fnmatchcase(c.name.lower(), pat)]
        return sorted(comps, key=lambda c: (c.name.lower(), c.plugin))

    def get(self, kind: str, name: str, task: str | None = None) -> Any:
        """The component ``name`` of ``kind``; ``PLUGIN:name`` picks one plugin's when two provide the name.

        ``task``: the ``run.task`` the name is for, when known: an unknown name's did-you-mean then suggests the
        components that fit it (:meth:`suggest`)."""
        kind = check_kind(kind)
        comps = self.components(kind)
        kind_label = SINGULAR[kind]
        plugin = None
        matches = [c for c in comps if c.name == name]
        if not matches and ":" in name:
            plugin, _, name = name.partition(":")
            if not any(p.name == plugin for p in self.plugins):
                raise PlugtrainError(
                    f"unknown plugin {plugin!r} in {plugin}:{name}."
                    + did_you_mean(plugin, [p.name for p in self.plugins])
                    + " Run `plugtrain plugins` to see them."
                )
            matches = [c for c in comps if c.name == name and c.plugin == plugin]
        if not matches:
            part = next((c for c in self._loaded(kind) if c.runtime_only and c.name == name), None)
            if part is not None:
                roles = ", ".join(ROLES.get((kind, r), r) for r in sorted(part.roles) if (kind, r) in RUNTIME_ROLES)
                raise PlugtrainError(
                    f"{kind_label} {name!r} (plugin {part.plugin!r}) is {roles}: a part of the runtime, which a "
                    f"spec does not name. Run `plugtrain list {kind}` to see what a spec can name."
                )
            others = [c for c in comps if c.name == name]
            if plugin is not None and others:
                raise PlugtrainError(
                    f"plugin {plugin!r} provides no {kind_label} {name!r}; write "
                    + " or ".join(f"'{c.qualified_name}'" for c in others)
                    + "."
                )
            where = f" in plugin {plugin!r}" if plugin is not None else ""
            candidates = [c for c in comps if plugin is None or c.plugin == plugin]
            broken = [p for p in self.plugins if p.error and not p.disabled and (plugin is None or p.name == plugin)
                      and (p.module is None or not p.hooks or hook_name(kind) in p.error)]
            if broken:  # the name may well be theirs: say so first, with what went wrong
                said = "; ".join(
                    f"plugin {p.name!r} ({p.dist_label}) "
                    + (f"failed to load: {p.error}" if p.module is None else f"is broken: {p.error}")
                    for p in broken)
                raise PlugtrainError(
                    f"unknown {kind_label} {name!r}{where}: {said}, so its components are missing; fix or "
                    f"uninstall it (see `plugtrain plugins`).{self.suggest(name, candidates, task)}"
                )
            raise PlugtrainError(
                f"unknown {kind_label} {name!r}{where}."
                + self.suggest(name, candidates, task)
                + f" Run `plugtrain list {kind}` to see them all."
            )
        if len(matches) > 1:
            providers = " and ".join(f"plugin {c.plugin!r} ({c.distribution}=={c.version})" for c in matches)
            choices = " or ".join(f"'{c.qualified_name}'" for c in matches)
            raise PlugtrainError(
                f"the {kind_label} name {name!r} is registered by more than one plugin: {providers}. "
                f"Write {choices} to choose one."
            )
        return matches[0]

    @staticmethod
    def suggest(name: str, comps: list[Any], task: str | None = None) -> str:
        """The did-you-mean for the unknown ``name`` among ``comps``: with a ``task``, only those whose ``fits``
        allows it when any of them is close (a typo is answered with a component of the run's own task, whatever
        other plugins are installed); else every close one."""
        if task is not None:
            hint = did_you_mean(name, sorted({c.name for c in comps if c.fits.fits_task(task)}, key=str.lower))
            if hint:
                return hint
        return did_you_mean(name, sorted({c.name for c in comps}, key=str.lower))

    # -- roles -----------------------------------------------------------------------------------------------------
    def role_components(self, kind: str, role: str) -> list[Any]:
        """Every component of ``kind`` that claims ``role`` (runtime-only ones included), in registration order:
        built-in plugins first, then the others by entry-point name. For the roles that gather several components
        (the default loggers and metrics); :meth:`with_role` is for the roles that need exactly one."""
        return [c for c in self._loaded(check_kind(kind)) if role in c.roles]

    def with_role(self, kind: str, role: str, *, required: bool = True) -> Any | None:
        """The one component of ``kind`` that claims ``role`` (see :data:`plugtrain.core.hookspecs.ROLES`).

        None claiming it: a PlugtrainError (``None`` when not ``required``). Two or more claiming it, whether built-in
        or not: a PlugtrainError naming each, since plugtrain cannot know which one the user means; disabling all but
        one plugin (``PLUGTRAIN_DISABLE_PLUGINS``) is the way out."""
        kind = check_kind(kind)
        found = self.role_components(kind, role)
        what = ROLES.get((kind, role), "")
        if not found:
            if not required:
                return None
            raise PlugtrainError(
                f"no {SINGULAR[kind]} has the role {role!r}{f' ({what})' if what else ''}: the plugin that provides "
                f"it is not loaded. Run `plugtrain plugins` to see which plugins are disabled or failed."
            )
        if len(found) > 1:
            providers = " and ".join(f"{c.name!r} of plugin {c.plugin!r} ({c.distribution}=={c.version})"
                                     for c in found)
            raise PlugtrainError(
                f"more than one {SINGULAR[kind]} claims the role {role!r}{f' ({what})' if what else ''}: {providers}. "
                "Disable all but one of those plugins with PLUGTRAIN_DISABLE_PLUGINS."
            )
        return found[0]

    def spec_name(self, comp: Any) -> str:
        """The name a spec gives ``comp``: its own, or ``PLUGIN:name`` when another plugin has one of that name."""
        same = [c for c in self.components(comp.kind) if c.name == comp.name]
        return comp.qualified_name if len(same) > 1 else comp.name

def check_kind(kind: str) -> str:
    """``kind`` itself, or a PlugtrainError with a did-you-mean. A singular (``loss``) is accepted."""
    if kind in KINDS:
        return kind
    for k in KINDS:
        if kind == SINGULAR[k]:
            return k
    raise PlugtrainError(f"unknown component kind {kind!r}." + did_you_mean(kind, KINDS) + f" Kinds: {', '.join(KINDS)}.")
