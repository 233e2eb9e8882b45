"""Loading a run spec: TOML, ``extends``, ``--set`` overrides, validation, the typed :class:`RunSpec`.

Pipeline (:func:`resolve`): read the file (tomllib; a syntax error becomes ``path:line:col: ...``), follow
``extends`` (relative to the file, deep-merged: tables merge key by key, anything else — arrays included — is
replaced; chainable; cycles are reported), apply each ``--set`` in order, then validate everything
(:mod:`plugtrain.core.spec.validate`). Every key remembers where it came from — which file, line and column, or which
override — so each problem points at the file that holds the bad key.

:func:`load_spec` returns the typed :class:`RunSpec` or raises :class:`SpecError` listing every problem;
:func:`dumps` writes a resolved spec as TOML (``plugtrain check --print``, :mod:`plugtrain.commands.check`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.core.spec.model import SECTIONS, RunSpec, from_dict, to_dict
from plugtrain.core.spec.overrides import OverrideError, apply, normalize, parse_override
from plugtrain.core.spec.tomlpos import Pos, format_path, locate, open_string, unclosed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(PlugtrainError):
    """One or more problems in a spec; ``problems`` holds one ``path:line:col: message`` string each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"plugtrain: error: {n} problem{'s' if n != 1 else ''} in the spec:"
        super().__init__("\n".join([head, *self.problems]))


@attrs.frozen
class Origin:
    """Where a value came from: a file position, or a ``--set`` override."""

    file: str | None = None
    pos: Pos | None = None
    override: str | None = None


@attrs.define
class Resolved:
    """A composed spec dict with the origin of every key path, and what went wrong on the way."""

    path: str
    data: dict[str, Any] = attrs.Factory(dict)
    origins: dict[tuple, Origin] = attrs.Factory(dict)
    problems: list[str] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)
    files: list[str] = attrs.Factory(list)  # the spec and the files it extends, most derived first
    overrides: list[str] = attrs.Factory(list)  # the --set texts, in order


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return os.path.normpath(path)
    return os.path.normpath(path) if rel.startswith("..") else rel


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _syntax(display: str, exc: Exception, text: str) -> str:
    msg = re.sub(r"\(((?:'[^']*', ?)+)\)", lambda m: "[" + ".".join(re.findall(r"'([^']*)'", m.group(1))) + "]",
                 str(exc))
    lines = text.splitlines() or [""]
    m = _AT.search(msg)
    at_end = "(at end of document)" in msg
    if m or at_end:  # a one-line string left open: point at its opening quote
        what = msg[: m.start()] if m else msg
        if what.startswith(("Illegal character '\\n'", "Illegal character '\\r'", 'Expected "\'"')):
            # tomllib reports a basic string at its line's end, a literal one at the end of the file
            candidates = [int(m.group(1))] if m else range(1, len(lines) + 1)
            line, start = next(((n, c) for n in candidates if n <= len(lines)
                                for c in [open_string(lines[n - 1])] if c is not None), (0, None))
            if start is not None:
                return f"{display}:{line}:{start}: TOML syntax error: this string is never closed: a one-line " \
                       "string must end on its line (use \"\"\" for several lines)"
    if m:
        return f"{display}:{m.group(1)}:{m.group(2)}: TOML syntax error: {msg[: m.start()]}"
    if at_end:
        opened = unclosed(text)
        if opened is not None:
            line, col, bracket = opened
            what = "array" if bracket == "[" else "inline table"
            return f"{display}:{line}:{col}: TOML syntax error: this {what} is never closed (the file ends inside " \
                   f"it): close it with {']' if bracket == '[' else '}'}"
        lines = text.split("\n")
        return f"{display}:{len(lines)}:{len(lines[-1]) + 1}: TOML syntax error: " \
               f"{msg.replace('(at end of document)', '').strip()} at the end of the file"
    return f"{display}: TOML syntax error: {msg}"


def _replaced(base: dict[str, Any], over: dict[str, Any], prefix: tuple = ()):
    """Key paths where ``over`` replaces (rather than merges into) ``base``."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            yield from _replaced(base[k], v, (*prefix, k))
        else:
            yield (*prefix, k)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, any other value (arrays too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _drop_under(origins: dict[tuple, Origin], path: tuple) -> None:
    n = len(path)
    for p in [p for p in origins if p[:n] == path]:
        del origins[p]


def _walk(value: Any, prefix: tuple):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*prefix, i))


def _read(path: Path, display: str, chain: tuple[Path, ...], res: Resolved) -> tuple[dict, dict] | None:
    """The file at ``path`` merged over the files it extends, with origins; None after a reported problem."""
    real = path.resolve()
    try:
        text = real.read_text(encoding="utf-8")
    except FileNotFoundError:
        res.problems.append(f"{display}: no such file")
        return None
    except IsADirectoryError:
        res.problems.append(f"{display}: is a directory, not a spec file")
        return None
    except UnicodeDecodeError:
        res.problems.append(f"{display}: not a UTF-8 text file")
        return None
    except OSError as exc:
        res.problems.append(f"{display}: cannot read: {exc.strerror or exc}")
        return None
    res.files.append(display)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        res.problems.append(_syntax(display, exc, text))
        return None
    origins = {p: Origin(display, pos) for p, pos in locate(text).items()}
    if "extends" not in data:
        return data, origins
    parent = data.pop("extends")
    eorigin = origins.pop(("extends",), None)
    epos = eorigin.pos if eorigin is not None else None
    where = f"{display}:{epos.value_line}:{epos.value_col}" if epos else display
    if not isinstance(parent, str) or not parent.strip():
        res.problems.append(f"{where}: extends must be the path of another spec file (a string, relative to this "
                            "file), e.g. extends = \"base.toml\"")
        return None
    ppath = real.parent / parent
    if ppath.resolve() in (*chain, real):
        cycle = " -> ".join(_display(p) for p in (*chain, real, ppath.resolve()))
        res.problems.append(f"{where}: extends cycle: {cycle}")
        return None
    if not ppath.is_file():
        siblings = [p.name for p in ppath.parent.glob("*.toml")] if ppath.parent.is_dir() else []
        res.problems.append(f"{where}: extends {parent!r}: no such file {_display(ppath)!r}."
                            + did_you_mean(Path(parent).name, siblings))
        return None
    base = _read(ppath, _display(ppath), (*chain, real), res)
    if base is None:
        return None
    bdata, borigins = base
    merged = deep_merge(bdata, data)
    for p in _replaced(bdata, data):
        _drop_under(borigins, p)
    borigins.update(origins)
    return merged, borigins


def resolve(path: str | Path, overrides: list[str] | tuple[str, ...] = (), validate: bool = True) -> Resolved:
    """Read, compose, override and (unless ``validate`` is false) validate the spec at ``path``."""
    display = str(path)
    res = Resolved(display, overrides=list(overrides))
    got = _read(Path(path), display, (), res)
    if got is None:
        return res
    res.data, res.origins = got
    for text in overrides:
        try:
            key_path, value = parse_override(text)
            apply(res.data, key_path, value)
        except OverrideError as exc:
            res.problems.append(f"{display}: --set {text}: {exc}")
            continue
        key_path = normalize(key_path, res.data)
        _drop_under(res.origins, key_path)
        for k in range(1, len(key_path)):  # tables the override created
            res.origins.setdefault(key_path[:k], Origin(override=text))
        for p in _walk(value, key_path):
            res.origins[p] = Origin(override=text)
    if not validate:
        return res
    from plugtrain.core.spec.validate import validate as run_validation

    found = run_validation(res.data)
    located = sorted(((_place(res, pr.path, pr.at), pr) for pr in found), key=lambda x: x[0])
    for (_, where, note), pr in located:
        (res.warnings if pr.warning else res.problems).append(
            f"{where}: {'warning: ' if pr.warning else ''}{pr.message}{note}")
    return res


def _place(res: Resolved, path: tuple, at: str) -> tuple[tuple, str, str]:
    """(sort key, ``file:line:col`` or ``spec: --set ...``, note) for a problem about ``path``.

    When the component that a table names was named by an override, the override is part of the cause: a problem
    located in a file gets a note naming it; a problem with no place of its own in a file is the override's.
    """
    origin, exact = None, True
    p = path
    while True:
        origin = res.origins.get(p)
        if origin is not None or not p:
            break
        p, exact = p[:-1], False
    note = ""
    for table in (path, path[:-1]) if path else ():
        for key in ("name", "dataset"):
            named = res.origins.get((*table, key))
            if named is None or not named.override or (*table, key) == path:
                continue
            if origin is None or (not exact and table == path):
                origin = named
            elif not origin.override:
                note = f" ({key} from --set {named.override})"
        if note or (origin is not None and origin.override):
            break
    if origin is None:
        top = res.files[0] if res.files else res.path
        return ("0000", 0, 0), f"{top}:1:1", note
    if origin.override:
        order = res.overrides.index(origin.override) if origin.override in res.overrides else 0
        return ("~", order, 0), f"{res.path}: --set {origin.override}", ""
    pos = origin.pos
    line, col = (pos.value_line, pos.value_col) if at == "value" and exact else (pos.line, pos.col)
    order = res.files.index(origin.file) if origin.file in res.files else 0
    return (f"{order:04d}", line, col), f"{origin.file}:{line}:{col}", note


def _warn(res: Resolved) -> None:
    from plugtrain.core.console import rank

    if rank() == 0:
        for w in res.warnings:
            print(f"plugtrain: {w}", file=sys.stderr)


def resolve_dict(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The composed and overridden spec dict (validated; raises :class:`SpecError`)."""
    res = resolve(path, overrides)
    if res.problems:
        raise SpecError(res.problems)
    return res.data


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec:
    """Read, compose, override and validate the spec at ``path``; raise :class:`SpecError` listing every problem."""
    res = resolve(path, overrides)
    if res.problems:
        raise SpecError(res.problems)
    _warn(res)
    return _typed(res)


def _typed(res: Resolved) -> RunSpec:
    try:
        return from_dict(res.data, source=res.path)
    except (KeyError, TypeError, ValueError) as exc:  # validation should have caught it: still no traceback
        raise SpecError([f"{res.path}: {exc}"]) from None


# -- writing TOML ----------------------------------------------------------------------------------------------------

HEADER = "# Resolved by `plugtrain check --print`: defaults filled in, extends and --set applied.\n"
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _scalar(k)


def _scalar(v: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": v}).strip()[len("v = "):]


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {_inline(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    return _scalar(v)


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps_dict(d: dict[str, Any]) -> str:
    """A spec dict as readable TOML: a table per section, ``[[...]]`` for loggers/metrics/callbacks, and arrays of
    inline tables (one per line) for augmentation lists."""
    top = [f"{_key(k)} = {_inline(v)}" for k, v in d.items() if not isinstance(v, dict) and not _is_aot(v)]
    out = [HEADER.rstrip("\n"), *top]
    for sec, value in d.items():
        if isinstance(value, dict):
            out += ["", f"[{_key(sec)}]"]
            for k, v in value.items():
                if _is_aot(v):
                    out.append(f"{_key(k)} = [")
                    out += [f"  {_inline(x)}," for x in v]
                    out.append("]")
                else:
                    out.append(f"{_key(k)} = {_inline(v)}")
        elif _is_aot(value):
            for item in value:
                out += ["", f"[[{_key(sec)}]]"]
                out += [f"{_key(k)} = {_inline(x)}" for k, x in item.items()]
    return "\n".join(out) + "\n"


def dumps(spec: RunSpec) -> str:
    """The resolved spec as TOML that is itself a valid spec (``check --print``; the runtime may save it too)."""
    d = to_dict(spec)
    return dumps_dict({k: d[k] for k in SECTIONS if k in d})


__all__ = ["Origin", "Resolved", "SpecError", "deep_merge", "dumps", "dumps_dict", "format_path",
           "load_spec", "resolve", "resolve_dict"]
