"""Loading plugins from the ``plugtrain`` entry-point group, and the registry of components they provide.

Built-in plugins come in through the same door as third-party ones: the entry points of installed distributions.
A plugin that fails to import, or whose hook raises, never takes the registry down: it is reported (on stderr, and in
``plugtrain plugins``) and every other plugin still loads. ``PLUGTRAIN_STRICT_PLUGINS=1`` makes such a failure fatal;
``PLUGTRAIN_DISABLE_PLUGINS=a,b`` skips entry points by name.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from plugtrain.core import hookspecs
from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.hookspecs import (
    COMMANDS_HOOK,
    CONTEXT,
    ENTRY_POINT_GROUP,
    KINDS,
    RUNTIME_ROLES,
    SINGULAR,
    hook_name,
)
from plugtrain.core.lookup import Lookup, check_kind  # noqa: F401 - check_kind: re-exported
from plugtrain.core.signature import (  # noqa: F401 - re-exported: the registry's names before the split
    Param,
    _annotation_str,
    _jsonable,
    _signature_names,
    signature_params,
)


def _as_roles(value: Any) -> frozenset[str]:
    return frozenset((value,) if isinstance(value, str) else value or ())


def _task_outputs(task: str) -> str | None:
    """What the model of a ``task`` run outputs (its task component's ``outputs``), which is what a loss or a metric
    of that task consumes; ``None`` for an unknown task."""
    from plugtrain.core.task import outputs_of

    return outputs_of(task)


@attrs.frozen
class Fits:
    """What a component declares it fits (``Component(..., fits={...})``); anything left out is not checked.

    ``tasks``: the ``run.task`` values (task components) it works for; for a dataset, the targets it yields, in the
    words of ``DatasetSplits.task`` (matched against the task's ``dataset_tasks``, and its name). ``consumes``: what it takes from the model,
    matched against each task's ``outputs`` (``"logits"``, ``"values"``, ``"embeddings"``, ...). ``views``: a loss that
    learns from several views of each sample (``data.num_views > 1``) says ``True``, one that ignores them ``False``.
    ``parameters``: a loss that owns trainable parameters (class centres) says ``True``, one without ``False`` (a
    ``[loss.optimizer]`` has nothing to train then). ``passes``: an optimizer that needs more than one
    forward/backward pass per step (SAM: 2), which gradient accumulation, fp16 loss scaling and a second optimizer
    cannot share a step with. ``spatial_dims``: the spatial ranks of the samples it takes (1 signals, 2 images,
    3 volumes; :attr:`spatial_dims`). Other keys are kept in ``other`` for plugins' own use.
    """

    tasks: tuple[str, ...] = ()
    consumes: str | None = None
    views: bool | None = None
    parameters: bool | None = None
    passes: int | None = None
    other: tuple[tuple[str, Any], ...] = ()

    def fits_task(self, task: str) -> bool:
        """False only when a declaration rules ``task`` out (unknown declarations are permissive)."""
        if self.tasks and task not in self.tasks:
            return False
        if not self.consumes:
            return True
        produced = _task_outputs(task)
        return not (produced and self.consumes != produced)

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The spatial ranks of the samples it works on (``fits={"spatial_dims": (2,)}``: 2-D images; ``(1, 2, 3)``:
        signals, images and volumes); ``()`` when it does not say. Kept in ``other``, so that any catalog carries it."""
        value = dict(self.other).get("spatial_dims", ())
        value = (value,) if isinstance(value, int) else value
        return tuple(int(x) for x in value or ())

    def task_text(self) -> str:
        if self.tasks:
            return " or ".join(self.tasks)
        names = get_registry().names("tasks") if self.consumes else []
        return " or ".join(t for t in names if _task_outputs(t) == self.consumes) or "other"


def _as_fits(value: Any) -> Fits:
    if isinstance(value, Fits):
        return value
    d = dict(value or {})
    tasks = d.pop("tasks", ())
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    consumes = d.pop("consumes", None)
    views = d.pop("views", None)
    parameters = d.pop("parameters", None)
    passes = d.pop("passes", None)
    return Fits(tasks, consumes, None if views is None else bool(views),
                None if parameters is None else bool(parameters), None if passes is None else int(passes),
                tuple(sorted(d.items())))


@attrs.frozen
class Component:
    """A component a plugin provides: a name, the factory that builds it, a one-line summary and its roles.

    Plugins create components as ``Component("Focal", focal_loss, summary="...")``; plugtrain fills in ``kind``,
    ``plugin``, ``distribution`` and ``version`` from the hook and entry point that provided it. ``roles`` names the
    runtime contracts the component fulfils (:data:`plugtrain.core.hookspecs.ROLES`), so that core finds "the
    resize transform" or "the default loggers" without naming a component.
    """

    name: str
    factory: Callable[..., Any] = attrs.field(repr=False)
    summary: str = ""
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_as_roles)
    kind: str = ""
    plugin: str = ""
    distribution: str = ""
    version: str = ""
    #: What the component fits (:class:`Fits`): ``fits={"tasks": ("my_task",), "consumes": "logits"}``.
    fits: Fits = attrs.field(default=Fits(), converter=_as_fits, kw_only=True)

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def runtime_only(self) -> bool:
        """True when the component claims a role of :data:`~plugtrain.core.hookspecs.RUNTIME_ROLES`: it is a part of
        the runtime (the ``[mixup]`` implementation, the EMA), not something a spec names."""
        return any((self.kind, role) in RUNTIME_ROLES for role in self.roles)

    @property
    def doc(self) -> str:
        factory = self.factory.func if isinstance(self.factory, functools.partial) else self.factory
        return inspect.getdoc(factory) or ""

    @property
    def one_line(self) -> str:
        if self.summary:
            return self.summary
        return self.doc.strip().split("\n", 1)[0] if self.doc else ""

    @functools.cached_property
    def _signature(self) -> tuple[list[Param], bool]:
        return signature_params(self.factory, CONTEXT.get(self.kind, frozenset()))

    @property
    def params(self) -> list[Param]:
        """User-settable parameters (context arguments, ``*args`` and ``**kwargs`` left out)."""
        return self._signature[0]

    @property
    def accepts_any_kwargs(self) -> bool:
        """True when the factory takes ``**kwargs``: then any parameter name is accepted."""
        return self._signature[1]

    def build(self, params: dict[str, Any] | None = None, /, **context: Any) -> Any:
        """Call the factory with the spec's ``params`` and those ``context`` arguments its signature names."""
        kwargs = dict(params or {})
        names = _signature_names(self.factory)
        for key, value in context.items():
            if names is None or key in names:
                kwargs[key] = value
        return self.factory(**kwargs)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "summary": self.one_line,
        }


@attrs.frozen
class Command:
    """A subcommand a plugin adds to the ``plugtrain`` command line (hook ``plugtrain_commands``).

    ``Command("hello", run, help="say hello", arguments=add_arguments)``: ``arguments(parser)`` adds the command's
    arguments to its ``argparse`` parser, ``run(args)`` gets the parsed ``argparse.Namespace`` and returns the exit
    code (``None`` is 0). plugtrain fills in ``plugin`` from the entry point that provided it.
    """

    name: str
    run: Callable[[Any], int | None] = attrs.field(repr=False)
    help: str = ""
    arguments: Callable[[Any], None] | None = attrs.field(default=None, repr=False)
    plugin: str = ""

    def add_to(self, subparsers: Any) -> None:
        """Add this command's parser to ``subparsers`` (argparse's), its help naming the plugin."""
        parser = subparsers.add_parser(self.name, help=f"{self.help} (plugin {self.plugin!r})".strip())
        if self.arguments is not None:
            try:
                self.arguments(parser)
            except Exception as exc:
                raise PlugtrainError(f"plugin {self.plugin!r}: the arguments of its command {self.name!r} could not "
                                     f"be added: {_last_line(exc)}") from exc
        parser.set_defaults(plugtrain_plugin_command=self)

    def invoke(self, args: Any) -> int:
        """Run the command with the parsed ``args``; its exit code."""
        code = self.run(args)
        return 0 if code is None else int(code)


_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _check_command(item: Any) -> None:
    """Raise TypeError unless ``item`` is a usable Command."""
    if not isinstance(item, Command):
        raise TypeError(f"{COMMANDS_HOOK} returned a {type(item).__name__}, not a plugtrain.Command")
    if not isinstance(item.name, str) or not _COMMAND_NAME.fullmatch(item.name):
        raise TypeError(f"{COMMANDS_HOOK} returned a Command named {item.name!r}; a command name is lowercase "
                        "letters, digits, '-' and '_', starting with a letter")
    if not callable(item.run):
        raise TypeError(f"command {item.name!r}: its run {item.run!r} is not callable")
    if item.arguments is not None and not callable(item.arguments):
        raise TypeError(f"command {item.name!r}: its arguments {item.arguments!r} is not callable")


@attrs.define
class PluginInfo:
    """One entry point in the ``plugtrain`` group, and what became of loading it."""

    name: str
    value: str
    distribution: str
    version: str
    module: Any = None
    hooks: list[str] = attrs.Factory(list)
    error: str | None = None
    disabled: bool = False

    @property
    def dist_label(self) -> str:
        return f"{self.distribution}=={self.version}" if self.distribution else "no distribution"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "error": self.error,
        }


def _last_line(exc: BaseException) -> str:
    """The last line of ``exc`` as a traceback would end, prefixed with its type when that line lacks it."""
    name = type(exc).__name__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return name
    last = lines[-1]
    return last if last.startswith(name) else f"{name}: {last}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


class Registry(Lookup):
    """The plugins found through entry points and the components they provide, kind by kind, on demand."""

    def __init__(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
        disabled: Iterable[str] | None = None,
        strict: bool | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if disabled is None:
            disabled = [n.strip() for n in os.environ.get("PLUGTRAIN_DISABLE_PLUGINS", "").split(",") if n.strip()]
        self.strict = _env_flag("PLUGTRAIN_STRICT_PLUGINS") if strict is None else strict
        self.warnings: list[str] = []  # every warning given: a registry that warned is not cached (catalog)
        say = warn or (lambda msg: print(f"plugtrain: warning: {msg}", file=sys.stderr))
        self._warn = lambda msg: (self.warnings.append(msg), say(msg))[-1]
        self._disabled = set(disabled)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._components: dict[str, list[Component]] = {}
        self._load(entry_points)

    # -- loading ---------------------------------------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        """Report a broken plugin: a warning, or with PLUGTRAIN_STRICT_PLUGINS a PlugtrainError (exit 2)."""
        if self.strict:
            raise PlugtrainError(f"{message} (PLUGTRAIN_STRICT_PLUGINS is set)")
        self._warn(message)

    def _marked_hooks(self, module: Any) -> list[str]:
        """Names in ``module`` marked with ``@hookimpl`` (misspelled ones included)."""
        names = []
        for attr in dir(module):
            try:
                if self.pm.parse_hookimpl_opts(module, attr) is not None:
                    names.append(attr)
            except Exception:  # odd attributes are simply not hooks
                continue
        return names

    def _load(self, entry_points: Iterable[importlib.metadata.EntryPoint]) -> None:
        seen: set[tuple[str, str]] = set()
        for ep in sorted(entry_points, key=lambda e: (e.value.split(".")[0] != "plugtrain", e.name)):
            if (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "",
                dist.version if dist is not None else "",
            )
            self.plugins.append(info)
            if ep.name in self._disabled:
                info.disabled = True
                info.error = "disabled by PLUGTRAIN_DISABLE_PLUGINS"
                continue
            try:
                module = ep.load()
            except BaseException as exc:  # a broken plugin must never take the registry down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                info.error = _last_line(exc)
                self._fail(f"plugin {ep.name!r} ({info.dist_label}) failed to load: {info.error}")
                continue
            info.module = module
            unknown = [n for n in self._marked_hooks(module) if n not in _HOOK_NAMES]
            if unknown:
                info.error = "; ".join(
                    f"unknown hook {n!r}." + did_you_mean(n, _HOOK_NAMES, n=1) for n in unknown
                )
                self._fail(f"plugin {ep.name!r} ({info.dist_label}) is invalid: {info.error}")
                continue
            try:
                self.pm.register(module, name=ep.name)
                self.pm.check_pending()
            except pluggy.PluginValidationError as exc:
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                # pluggy's first line names the plugin object; the rest says what is wrong with which hook.
                lines = str(exc).splitlines()
                info.error = _one_line(" ".join(lines[1:]) if len(lines) > 1 else str(exc))
                self._fail(f"plugin {ep.name!r} ({info.dist_label}) is invalid: {info.error}")
                continue
            except ValueError as exc:  # the same module, or the same name, registered twice
                other = self.pm.get_plugin(ep.name)
                if other is not None and other is not module:
                    first = next((p for p in self.plugins if p.name == ep.name and p is not info), None)
                    info.error = (
                        f"the entry-point name {ep.name!r} is already used by "
                        f"{first.dist_label if first else 'another plugin'}"
                    )
                else:
                    info.error = _last_line(exc)
                self._fail(f"plugin {ep.name!r} ({info.dist_label}) could not be registered: {info.error}")
                continue
            info.hooks = sorted(impl_name for impl_name in _HOOK_NAMES if _implements(self.pm, ep.name, impl_name))
            unmarked = [
                n
                for n, obj in vars(module).items()
                if n.startswith("plugtrain_")
                and inspect.isfunction(obj)
                and obj.__module__ == module.__name__
                and n not in info.hooks
            ]
            for n in unmarked:
                hint = f"; it is not a hook name.{did_you_mean(n, _HOOK_NAMES, n=1)}" if n not in _HOOK_NAMES else ""
                self._warn(
                    f"plugin {ep.name!r} ({info.dist_label}): function {n} lacks the @hookimpl marker "
                    f"and is ignored{hint}"
                )
        unknown = sorted(self._disabled - {p.name for p in self.plugins})
        for name in unknown:
            self._warn(
                f"PLUGTRAIN_DISABLE_PLUGINS names {name!r}, which is no plugin."
                + did_you_mean(name, [p.name for p in self.plugins])
                + " Run `plugtrain plugins` to see them."
            )

    # -- components ------------------------------------------------------------------------------------------------
    def _loaded(self, kind: str) -> list[Component]:
        """Every component of ``kind``, runtime-only ones included, in registration order."""
        if kind not in self._components:
            found: list[Component] = []
            hook = getattr(self.pm.hook, hook_name(kind))
            for impl in hook.get_hookimpls():  # registration order: built-ins first, then by entry-point name
                info = self.plugin(impl.plugin_name)
                try:
                    items = list(impl.function() or [])
                    for item in items:
                        _check_component(item, kind)
                except Exception as exc:  # one broken hook must not hide the others
                    msg = _last_line(exc)
                    if info is not None:
                        err = f"{hook_name(kind)}: {msg}"
                        info.error = f"{info.error}; {err}" if info.error else err
                    label = info.dist_label if info else "no distribution"
                    self._fail(f"plugin {impl.plugin_name!r} ({label}) failed in {hook_name(kind)}: {msg}")
                    continue
                seen: set[str] = set()
                for item in items:
                    if item.name in seen:
                        self._warn(
                            f"plugin {impl.plugin_name!r} returns the {SINGULAR[kind]} {item.name!r} twice; "
                            "the first is used"
                        )
                        continue
                    seen.add(item.name)
                    found.append(
                        attrs.evolve(
                            item,
                            kind=kind,
                            plugin=impl.plugin_name,
                            distribution=info.distribution if info else "",
                            version=info.version if info else "",
                        )
                    )
            self._components[kind] = found
        return self._components[kind]

    # -- commands --------------------------------------------------------------------------------------------------
    def commands(self, reserved: Iterable[str] = ()) -> list[Command]:
        """The subcommands plugins add (hook ``plugtrain_commands``), in registration order. A name in ``reserved``
        (the built-in commands) or already added by an earlier plugin is refused: a warning naming both (an error
        with ``PLUGTRAIN_STRICT_PLUGINS``), and the command is left out. A hook that raises or returns something that
        is not a usable :class:`Command` is reported as for components; the other plugins' commands remain."""
        taken = {name: "is a built-in command" for name in reserved}
        out: list[Command] = []
        for impl in getattr(self.pm.hook, COMMANDS_HOOK).get_hookimpls():
            info = self.plugin(impl.plugin_name)
            label = info.dist_label if info else "no distribution"
            try:
                items = list(impl.function() or [])
                for item in items:
                    _check_command(item)
            except Exception as exc:
                msg = _last_line(exc)
                if info is not None:
                    err = f"{COMMANDS_HOOK}: {msg}"
                    info.error = f"{info.error}; {err}" if info.error else err
                self._fail(f"plugin {impl.plugin_name!r} ({label}) failed in {COMMANDS_HOOK}: {msg}")
                continue
            for item in items:
                if item.name in taken:
                    self._fail(f"plugin {impl.plugin_name!r} ({label}) adds the command {item.name!r}, which "
                               f"{taken[item.name]}; the plugin's is ignored")
                    continue
                taken[item.name] = f"plugin {impl.plugin_name!r} ({label}) already adds"
                out.append(attrs.evolve(item, plugin=impl.plugin_name))
        return out


def _check_component(item: Any, kind: str) -> None:
    """Raise TypeError unless ``item`` is a usable Component."""
    if not isinstance(item, Component):
        raise TypeError(f"{hook_name(kind)} returned a {type(item).__name__}, not a plugtrain.Component")
    if not isinstance(item.name, str) or not item.name.strip():
        raise TypeError(f"{hook_name(kind)} returned a Component with the name {item.name!r}")
    if not callable(item.factory):
        raise TypeError(f"component {item.name!r}: its factory {item.factory!r} is not callable")
    if not all(isinstance(r, str) and r for r in item.roles):
        raise TypeError(f"component {item.name!r}: roles must be non-empty strings, got {sorted(map(repr, item.roles))}")


_HOOK_NAMES = [hook_name(k) for k in KINDS] + [COMMANDS_HOOK]


def _implements(pm: pluggy.PluginManager, plugin_name: str, hook: str) -> bool:
    caller = getattr(pm.hook, hook)
    return any(impl.plugin_name == plugin_name for impl in caller.get_hookimpls())



_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests, and after installing a plugin in-process)."""
    global _registry
    _registry = None
    importlib.invalidate_caches()
    from plugtrain.core.catalog import reset_catalog

    reset_catalog()
