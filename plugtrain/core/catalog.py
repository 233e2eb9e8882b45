"""The component catalog: what ``list``, ``show``, ``check`` and ``schema`` read of each component, cached on disk.

Loading the live registry imports every plugin's libraries (timm, albumentations, torch) to read names and
signatures: seconds. The catalog stores, once per environment, what those commands need of each component (name,
kind, plugin, distribution and version, summary, docstring, parameters with annotations, defaults and declared
ranges as type trees, roles, fits, where a parameter names a run-directory path, which plugins have a validator or
retired names) in ``<cache>/catalog/<environment>.json``; ``<cache>`` is ``$PLUGTRAIN_CACHE_DIR``, else
``$XDG_CACHE_HOME/plugtrain``, else ``~/.cache/plugtrain``.

The file is keyed by everything that can change it: plugtrain's version, the Python and the environment, the
``plugtrain`` entry points with their distributions and versions, ``PLUGTRAIN_DISABLE_PLUGINS``, and stamps (path,
mtime, size) of every loaded module file of plugtrain and of the plugins' packages, and of the folder of every other
library loaded from site-packages (reinstalling a library recreates it). Any change rebuilds it from a registry of its
own; a file that is unreadable, stale, or fails its SHA-256 (the first line) is simply rebuilt, and written
atomically, so concurrent commands never see half a file. An environment where a plugin fails or warns while loading
is not cached: the file then says only that, and commands use the live registry, whose messages stay where they
were. ``PLUGTRAIN_NO_CATALOG=1`` skips the catalog; deleting the folder clears it.

A catalog component imports its plugin only when its code must run: its ``factory`` (a plugin's own validator, a
build) is re-created from a stored reference (``module:qualname`` and ``functools.partial`` arguments) or, failing
that, taken from the live registry.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from plugtrain.core.hookspecs import ENTRY_POINT_GROUP, KINDS, RUNTIME_ROLES
from plugtrain.core.lookup import Lookup
from plugtrain.core.signature import Param, _signature_names

FORMAT = 1
NO_CATALOG_ENV = "PLUGTRAIN_NO_CATALOG"
_DIST_INFO = re.compile(r"(.+?)-(\d[^-]*)\.dist-info")


def cache_root() -> Path:
    """``$PLUGTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/plugtrain``, else ``~/.cache/plugtrain``."""
    if os.environ.get("PLUGTRAIN_CACHE_DIR"):
        return Path(os.path.expanduser(os.environ["PLUGTRAIN_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plugtrain"


def catalog_path() -> Path:
    """This environment's catalog file (one per Python environment, named by a hash of its prefix)."""
    env = hashlib.sha256(f"{sys.prefix}\0{sys.executable}".encode()).hexdigest()[:16]
    return cache_root() / "catalog" / f"{env}.json"


def environment_key() -> dict[str, Any]:
    """What the catalog's content depends on and costs little to read: versions, entry points, disabled plugins."""
    from plugtrain import __version__

    eps = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        folder = os.path.basename(str(getattr(dist, "_path", "")))
        named = _DIST_INFO.fullmatch(folder)  # NAME-VERSION.dist-info names both without parsing METADATA
        if dist is None:
            eps.append([ep.name, ep.value, "", ""])
        elif named:
            eps.append([ep.name, ep.value, named[1].lower().replace("_", "-"), named[2]])
        else:
            eps.append([ep.name, ep.value, dist.metadata["Name"], dist.version])
    return {"format": FORMAT, "plugtrain": __version__, "python": sys.version, "prefix": sys.prefix,
            "entry_points": sorted(eps), "disabled": os.environ.get("PLUGTRAIN_DISABLE_PLUGINS", "").strip()}


# -- values and type trees as JSON -----------------------------------------------------------------------------------


class _Unencodable(Exception):
    pass


def encode(v: Any) -> Any:
    """``v`` as JSON, tagged where JSON would lose it (tuples, non-finite floats, type trees); raises _Unencodable."""
    from plugtrain.core.spec.typecheck import Checks, T

    t = type(v)
    if v is None or t in (bool, int, str):
        return v
    if t is float:
        return v if math.isfinite(v) else {"f": repr(v)}
    if t is list:
        return [encode(x) for x in v]
    if t is tuple:
        return {"t": [encode(x) for x in v]}
    if t is dict and all(type(k) is str for k in v):
        return {"d": {k: encode(x) for k, x in v.items()}}
    if v is Ellipsis:
        return {"e": 1}
    if t is T:
        return {"T": [v.kind, [encode(a) for a in v.args], v.variadic, v.label, list(v.names),
                      None if v.checks is None else encode(v.checks)]}
    if t is Checks and not v.predicates:
        return {"C": [encode(x) for x in (v.lo, v.lo_open, v.hi, v.hi_open, v.multiple_of, v.min_len, v.max_len,
                                          v.nonfinite)]}
    raise _Unencodable(repr(v))


def decode(v: Any) -> Any:
    """The value :func:`encode` wrote."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "f":
        return float(x)
    if tag == "t":
        return tuple(decode(i) for i in x)
    if tag == "d":
        return {k: decode(i) for k, i in x.items()}
    if tag == "e":
        return Ellipsis
    from plugtrain.core.spec.typecheck import Checks, T

    if tag == "T":
        kind, args, variadic, label, names, checks = x
        return T(kind, tuple(decode(a) for a in args), variadic, label, tuple(names),
                 None if checks is None else decode(checks))
    if tag == "C":
        return Checks(*[decode(i) for i in x])
    raise ValueError(f"unknown tag {tag!r}")


def _exact(v: Any) -> Any:
    """``encode(v)``, refused unless it decodes back to an equal value."""
    out = encode(v)
    back = decode(out)
    if back != v and repr(back) != repr(v):
        raise _Unencodable(repr(v))
    return out


# -- building --------------------------------------------------------------------------------------------------------


def _unwrap(factory: Any) -> Any:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def factory_ref(factory: Any) -> list[Any] | None:
    """``[module, qualname, args, keywords]`` that re-create ``factory`` by importing its module, or None."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    func = factory
    if isinstance(factory, functools.partial):
        if isinstance(factory.func, functools.partial):
            return None
        func, args, kwargs = factory.func, list(factory.args), dict(factory.keywords)
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        ref = [module, qualname, _exact(args), _exact(kwargs)]
        if _resolve(ref) is not func and _unwrap(_resolve(ref)) is not func:
            return None
    except Exception:
        return None
    return ref


def _resolve(ref: list[Any]) -> Any:
    obj: Any = importlib.import_module(ref[0])
    for part in ref[1].split("."):
        obj = getattr(obj, part)
    return obj


def _params_entry(comp: Any) -> tuple[list[Any], bool]:
    """The stored parameters of ``comp`` (each with its checked type) and whether all of them are exact."""
    from plugtrain.core.spec.components_check import param_markers
    from plugtrain.core.spec.typecheck import factory_namespace, from_annotation, toml_view

    ns = factory_namespace(comp.factory)
    markers = param_markers(comp.factory)
    out, exact = [], True
    for p in comp.params:
        entry: dict[str, Any] = {"name": p.name, "ann": p.annotation_str, "req": p.required,
                                 "repr": repr(p.default)}
        try:
            entry["default"] = _exact(p.default)
            entry["type"] = _exact(toml_view(from_annotation(p.annotation, ns)))
        except _Unencodable:
            exact = False
        paths = [getattr(m, "what", "") for m in markers.get(p.name, ()) if type(m).__name__ == "InsideRunDir"]
        if paths:
            entry["run_paths"] = paths
        out.append(entry)
    return out, exact


def build(registry: Any, key: dict[str, Any]) -> dict[str, Any]:
    """The catalog of ``registry`` (every hook called). When a plugin failed or warned, only ``{"broken": true}`` with
    the key and stamps: commands then use the live registry, which reports the problem where it always did."""
    loaded = {kind: registry._loaded(kind) for kind in KINDS}
    if getattr(registry, "warnings", None) or any(p.error and not p.disabled for p in registry.plugins):
        return {"key": key, "stamps": _stamps(registry), "broken": True}
    tables: dict[str, list[Any]] = {"params": [], "docs": []}
    index: dict[str, dict[str, int]] = {"params": {}, "docs": {}}

    def intern(table: str, value: Any) -> int:
        text = json.dumps(value, sort_keys=True)
        if text not in index[table]:
            index[table][text] = len(tables[table])
            tables[table].append(value)
        return index[table][text]

    memo: dict[Any, tuple[int, bool]] = {}
    components: dict[str, list[Any]] = {}
    for kind, comps in loaded.items():
        rows = components[kind] = []
        for c in comps:
            f = c.factory
            sig = (kind, id(_unwrap(f)), len(getattr(f, "args", ())), repr(sorted(getattr(f, "keywords", {}).items())))
            if sig not in memo:  # timm's 1300 backbones share one signature: read it once
                params, exact = _params_entry(c)
                memo[sig] = (intern("params", params), exact, c.accepts_any_kwargs)
            pidx, exact, any_kwargs = memo[sig]
            fits = c.fits
            rows.append({"name": c.name, "summary": c.summary, "doc": intern("docs", c.doc), "roles": sorted(c.roles),
                         "plugin": c.plugin, "distribution": c.distribution, "version": c.version,
                         "fits": [list(fits.tasks), fits.consumes, fits.views, fits.parameters, fits.passes,
                                  _safe(fits.other)],
                         "params": pidx, "exact": exact, "any_kwargs": any_kwargs,
                         "same": _same_key(f),
                         "ref": factory_ref(f)})
    plugins = []
    for p in registry.plugins:
        retired = getattr(p.module, "PLUGTRAIN_RETIRED", None)
        plugins.append({"name": p.name, "value": p.value, "distribution": p.distribution, "version": p.version,
                        "hooks": list(p.hooks), "error": p.error, "disabled": p.disabled,
                        "validate": callable(getattr(p.module, "PLUGTRAIN_VALIDATE", None)),
                        "validate_memo": _memoizable(p.module),
                        "retired": retired if isinstance(retired, dict) else None})
    return {"key": key, "stamps": _stamps(registry), "plugins": plugins, "components": components, **tables}


def _memoizable(module: Any) -> bool:
    """Whether the plugin's ``PLUGTRAIN_VALIDATE`` may be answered from stored verdicts: it says it is pure
    (``PLUGTRAIN_VALIDATE_PURE = True``: its answer depends only on the component and the parameters, given the
    installed libraries, which the catalog's stamps cover) and takes no ``context`` (files on disk, the queue)."""
    from plugtrain.core.runtime.rundir import takes_context

    check = getattr(module, "PLUGTRAIN_VALIDATE", None)
    return callable(check) and getattr(module, "PLUGTRAIN_VALIDATE_PURE", False) is True and not takes_context(check)


def _same_key(factory: Any) -> str:
    """Names the function under ``factory``'s partials: equal for two components built by the same function."""
    f = _unwrap(factory)
    return f"{getattr(f, '__module__', '')}:{getattr(f, '__qualname__', id(f))}"


def _safe(value: Any) -> Any:
    try:
        return _exact(value)
    except _Unencodable:
        return None


def _stamps(registry: Any) -> list[list[Any]]:
    """(path, mtime_ns, size) of every loaded module file of a plugin's top-level package (plugtrain's too), and of
    the folder (or file) of every other top-level package loaded from site-packages: installing, upgrading or
    removing a library recreates its folder."""
    tops = {"plugtrain"} | {p.value.split(":")[0].split(".")[0] for p in registry.plugins}
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        top = name.split(".")[0]
        if top in tops:
            files.add(path)
        elif name == top and "-packages" in path:
            files.add(os.path.dirname(path) if os.path.basename(path).startswith("__init__.") else path)
    return [s for s in (_stamp(f) for f in sorted(files)) if s is not None]


def _stamp(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_mtime_ns, st.st_size]


def _fresh(data: Any, key: dict[str, Any]) -> bool:
    return isinstance(data, dict) and data.get("key") == key and all(_stamp(s[0]) == s for s in data["stamps"])


# -- reading ---------------------------------------------------------------------------------------------------------


class CatalogPlugin:
    """A plugin as the catalog knows it; its module is imported only when asked for (its validator runs)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.name, self.value = d["name"], d["value"]
        self.distribution, self.version = d["distribution"], d["version"]
        self.hooks, self.error, self.disabled = d["hooks"], d["error"], d["disabled"]
        self.has_validate, self.retired = d["validate"], d["retired"]
        self.validate_memo = d.get("validate_memo", False)  # its verdicts may be stored (Catalog.remember)

    @property
    def dist_label(self) -> str:
        return f"{self.distribution}=={self.version}" if self.distribution else "no distribution"

    @functools.cached_property
    def module(self) -> Any:
        if self.disabled:
            return None
        return importlib.metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version, "hooks": self.hooks,
                "error": self.error}


class Entry:
    """A component as the catalog knows it: the same attributes as :class:`~plugtrain.core.registry.Component`."""

    def __init__(self, kind: str, d: dict[str, Any], catalog: Catalog) -> None:
        from plugtrain.core.registry import Fits

        self.kind, self.name, self.summary, self.roles = kind, d["name"], d["summary"], frozenset(d["roles"])
        self.plugin, self.distribution, self.version = d["plugin"], d["distribution"], d["version"]
        tasks, consumes, views, parameters, passes, other = d["fits"]
        self.fits = Fits(tuple(tasks), consumes, views, parameters, passes, decode(other) or ())
        self.accepts_any_kwargs, self.factory_key = d["any_kwargs"], d["same"]
        self._d, self._catalog = d, catalog

    qualified_name = property(lambda self: f"{self.plugin}:{self.name}")
    runtime_only = property(lambda self: any((self.kind, role) in RUNTIME_ROLES for role in self.roles))

    @property
    def doc(self) -> str:
        return self._catalog.data["docs"][self._d["doc"]]

    @property
    def one_line(self) -> str:
        if self.summary:
            return self.summary
        return self.doc.strip().split("\n", 1)[0] if self.doc else ""

    @functools.cached_property
    def params(self) -> list[Param]:
        """The parameters; each carries its checked type (``toml_type``) and run-directory paths (``run_paths``)."""
        if not self._d["exact"]:
            return self.live().params
        out = []
        for e in self._catalog.data["params"][self._d["params"]]:
            out.append(Param(e["name"], decode(e["default"]), e["ann"], e["req"], toml_type=decode(e["type"]),
                             run_paths=tuple(e.get("run_paths", ()))))
        return out

    @functools.cached_property
    def factory(self) -> Any:
        ref = self._d["ref"]
        if ref is not None:
            try:
                func = _resolve(ref)
                args, kwargs = decode(ref[2]), decode(ref[3])
                return functools.partial(func, *args, **kwargs) if args or kwargs else func
            except Exception:  # moved since the catalog was written: the live registry knows
                pass
        return self.live().factory

    def live(self) -> Any:
        """The live registry's component (imports every plugin)."""
        from plugtrain.core.errors import PlugtrainError
        from plugtrain.core.registry import get_registry

        for c in get_registry()._loaded(self.kind):
            if c.name == self.name and c.plugin == self.plugin:
                return c
        raise PlugtrainError(f"plugin {self.plugin!r} no longer provides the {self.kind} {self.name!r} it had when the "
                             "component catalog was written; run the command again")

    def build(self, params: dict[str, Any] | None = None, /, **context: Any) -> Any:
        kwargs = dict(params or {})
        names = _signature_names(self.factory)
        kwargs.update({k: v for k, v in context.items() if names is None or k in names})
        return self.factory(**kwargs)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version, "summary": self.one_line}


class Catalog(Lookup):
    """The registry's answers read from the catalog file (:class:`~plugtrain.core.lookup.Lookup`'s queries)."""

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        self.data, self.path = data, path
        self.plugins = [CatalogPlugin(p) for p in data["plugins"]]
        self._components: dict[str, list[Entry]] = {}
        self.token = hashlib.sha256(json.dumps([data["key"], data["stamps"]]).encode()).hexdigest()
        self._memo: dict[str, dict[str, Any]] = {}

    def _loaded(self, kind: str) -> list[Entry]:
        if kind not in self._components:
            self._components[kind] = [Entry(kind, d, self) for d in self.data["components"].get(kind, ())]
        return self._components[kind]

    def cached(self, name: str, make: Any) -> Any:
        """``make()``, stored beside the catalog under ``name`` and valid as long as the catalog is (``schema``)."""
        side = self.path.with_name(f"{self.path.stem}.{name}.json") if self.path is not None else None
        if side is not None:
            try:
                stored = json.loads(side.read_text(encoding="utf-8"))
                if stored.get("token") == self.token:
                    return stored["value"]
            except (OSError, ValueError, KeyError, AttributeError):
                pass
        value = make()
        if side is not None:
            _write(side, json.dumps({"token": self.token, "value": value}, separators=(",", ":")))
        return value


    def remember(self, table: str, key: str, make: Any) -> Any:
        """``make()`` for ``key``, stored in the side table ``table`` beside the catalog and valid as long as the
        catalog is (a plugin's pure validator's verdicts: ``check`` then need not import its library). A ``make``
        that raises stores nothing. The table is rewritten whole (atomically); a lost concurrent update is only a
        miss next time."""
        side = self.path.with_name(f"{self.path.stem}.{table}.json") if self.path is not None else None
        memo = self._memo.get(table)
        if memo is None:
            memo = {}
            try:
                stored = json.loads(side.read_text(encoding="utf-8")) if side is not None else {}
                if stored.get("token") == self.token and isinstance(stored.get("value"), dict):
                    memo = stored["value"]
            except (OSError, ValueError, AttributeError):
                pass
            self._memo[table] = memo
        if key in memo:
            return memo[key]
        value = memo[key] = make()
        if len(memo) > _MEMO_MAX:  # a table that only grows: start again
            memo.clear()
            memo[key] = value
        if side is not None:
            _write(side, json.dumps({"token": self.token, "value": memo}, separators=(",", ":")))
        return value


_MEMO_MAX = 4096


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically; a cache that cannot be written is only slower next time."""
    from plugtrain.core.atomic import atomic_open

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w", fsync=False) as f:
            f.write(text)
    except OSError:
        pass


_catalog: Any = None


def get_catalog() -> Any:
    """The catalog (:class:`Catalog`) when it is fresh or can be built; else the live registry, which answers alike."""
    global _catalog
    if _catalog is not None:
        return _catalog
    from plugtrain.core.registry import Registry, get_registry

    if os.environ.get(NO_CATALOG_ENV, "").strip() not in ("", "0"):
        return get_registry()
    path = catalog_path()
    try:
        key = environment_key()
    except Exception:  # unreadable metadata: the registry reports it its own way
        return get_registry()
    data = load_data(path, key)
    if data is None:
        try:  # a registry of its own, quiet: its warnings would be said again by the live one, where they belong
            data = build(Registry(strict=False, warn=lambda message: None), key)
        except Exception:  # a component the catalog cannot describe: the live registry answers
            from plugtrain.core.errors import debug

            if debug():
                raise
            return get_registry()
        body = json.dumps(data, separators=(",", ":"))
        _write(path, hashlib.sha256(body.encode()).hexdigest() + "\n" + body)
    if data.get("broken"):
        return get_registry()
    _catalog = Catalog(data, path)
    return _catalog


def load_data(path: Path, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What is stored at ``path`` when it is intact (its SHA-256 first line matches) and fresh for ``key`` (default:
    this environment's); None when it is missing, corrupt, stale or of another format."""
    try:
        digest, _, body = path.read_bytes().partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            return None
        data = json.loads(body)
        if not _fresh(data, environment_key() if key is None else key):
            return None
        if not data.get("broken"):
            Catalog(data, path)._loaded(KINDS[0])  # the shape is understood
        return data
    except Exception:  # unreadable or half-understood: rebuilt by the caller
        return None


def load(path: Path) -> Catalog | None:
    """The catalog stored at ``path``, when intact, fresh and not of a broken environment."""
    data = load_data(path)
    return Catalog(data, path) if data is not None and not data.get("broken") else None


def reset_catalog() -> None:
    """Forget the process-wide catalog (tests, and after installing a plugin in-process)."""
    global _catalog
    _catalog = None
