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

import contextlib
import copy
import os
import re
import sys
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError, did_you_mean, printable
from plugtrain.core.spec.model import SECTIONS, RunSpec, from_dict, to_dict
from plugtrain.core.spec.overrides import OverrideError, apply, normalize, parse_key, parse_override
from plugtrain.core.spec.tomlpos import Pos, format_path, locate, open_multiline, open_string, too_deep, unclosed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(PlugtrainError):
    """One or more problems in a spec; ``problems`` holds one ``path:line:col: message`` string each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [printable(p, keep="") for p in problems]  # a key "\n" from the file stays one line
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
    notes: list[str] = attrs.Factory(list)  # what composing did that a reader may not expect (extends)


#: Nesting deeper than this (arrays and inline tables) is refused: no spec needs it, and readers recurse on it.
MAX_DEPTH = 64
#: TOML 1.0: integers are 64-bit signed; a value outside this range must be an error.
INT64 = (-(2**63), 2**63 - 1)


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
    if at_end and msg.startswith(("Unterminated string", 'Expected "\'\'\'"')):
        opened_string = open_multiline(text)
        if opened_string is not None:
            line, col = opened_string
            quotes = text.splitlines()[line - 1][col - 1: col + 2]
            return f"{display}:{line}:{col}: TOML syntax error: this multi-line string is never closed (the file " \
                   f"ends inside it): close it with {quotes}"
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


def _big_ints(data: Any, prefix: tuple = ()):
    """Key paths of the integers outside TOML's 64-bit range."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _big_ints(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _big_ints(v, (*prefix, i))
    elif isinstance(data, int) and not isinstance(data, bool) and not INT64[0] <= data <= INT64[1]:
        yield prefix


def _read(path: Path, display: str, chain: tuple[Path, ...], res: Resolved) -> tuple[dict, dict] | None:
    """The file at ``path`` merged over the files it extends, with origins; None after a reported problem."""
    try:
        return _read_file(path, display, chain, res)
    except RecursionError:  # a structure too deep for the readers that too_deep() does not see (dotted keys)
        res.problems.append(f"{display}:1:1: the spec is nested too deeply to read (more than {MAX_DEPTH} levels)")
        return None


def _read_file(path: Path, display: str, chain: tuple[Path, ...], res: Resolved) -> tuple[dict, dict] | None:
    if "\x00" in str(path):
        res.problems.append(f"{display!r}: a path cannot hold a NUL byte")
        return None
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
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark (some editors write one): not part of the TOML
    deep = too_deep(text, MAX_DEPTH)
    if deep is not None:
        res.problems.append(f"{display}:{deep[0]}:{deep[1]}: arrays and inline tables nested more than {MAX_DEPTH} "
                            "levels deep: no spec needs that many")
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        res.problems.append(_syntax(display, exc, text))
        return None
    origins = {p: Origin(display, pos) for p, pos in locate(text).items()}
    big = list(_big_ints(data))
    if big:  # TOML 1.0 requires an error: the document is not TOML, like a syntax error
        for p in big:
            pos = origins[p].pos if p in origins else None
            at = f"{display}:{pos.value_line}:{pos.value_col}" if pos else f"{display}:1:1"
            res.problems.append(f"{at}: {format_path(p)}: the integer {_short(_value_at(data, p))} does not fit in 64 "
                                f"bits: TOML integers go from {INT64[0]} to {INT64[1]}")
        return None
    upos = origins.get(("unset",))
    unset = _pop_unset(data, origins, display, res)
    if "extends" not in data:
        if unset:
            at = f"{display}:{upos.pos.line}:{upos.pos.col}" if upos and upos.pos else display
            res.problems.append(f"{at}: unset removes keys that this file inherits, but it has no extends: "
                                "delete the keys themselves")
            return None
        if unset is None:
            return None
        return data, origins
    parent = data.pop("extends")
    eorigin = origins.pop(("extends",), None)
    epos = eorigin.pos if eorigin is not None else None
    where = f"{display}:{epos.value_line}:{epos.value_col}" if epos else display
    if not isinstance(parent, str) or not parent.strip():
        res.problems.append(f"{where}: extends must be the path of another spec file (a string, relative to this "
                            "file), e.g. extends = \"base.toml\"")
        return None
    if "\x00" in parent:
        res.problems.append(f"{where}: extends {parent!r}: a path cannot hold a NUL byte")
        return None
    ppath = real.parent / parent
    if ppath.resolve() in (*chain, real):
        cycle = " -> ".join(_display(p) for p in (*chain, real, ppath.resolve()))
        res.problems.append(f"{where}: extends cycle: {cycle}")
        return None
    if ppath.is_dir():
        res.problems.append(f"{where}: extends {parent!r}: {_display(ppath)!r} is a directory, not a spec file; "
                            "name a .toml file in it")
        return None
    if not ppath.is_file():
        siblings = [p.name for p in ppath.parent.glob("*.toml")] if ppath.parent.is_dir() else []
        res.problems.append(f"{where}: extends {parent!r}: no such file {_display(ppath)!r}."
                            + did_you_mean(Path(parent).name, siblings))
        return None
    base = _read(ppath, _display(ppath), (*chain, real), res)
    if base is None or unset is None:
        return None
    bdata, borigins = base
    pdisplay = _display(ppath)
    bdata = _apply_unset(bdata, borigins, unset, data, display, pdisplay, res)
    if bdata is None:
        return None
    bdata = _switched_components(bdata, borigins, data, origins, display, pdisplay, res)
    merged = deep_merge(bdata, data)
    for p in _replaced(bdata, data):
        _drop_under(borigins, p)
    borigins.update(origins)
    return merged, borigins


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def _value_at(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def _pop_unset(data: dict[str, Any], origins: dict[tuple, Origin], display: str,
               res: Resolved) -> list[tuple[tuple, str, str]] | None:
    """The file's ``unset = ["section.key", ...]`` as ``(key path, text, place)``; ``[]`` when absent, None after a
    reported problem. ``unset`` deletes keys the file inherits through ``extends`` (see :func:`_apply_unset`)."""
    if "unset" not in data:
        return []
    value = data.pop("unset")
    uorigin = origins.pop(("unset",), None)
    upos = uorigin.pos if uorigin is not None else None
    where = f"{display}:{upos.value_line}:{upos.value_col}" if upos else display
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        res.problems.append(f"{where}: unset must be an array of key paths (strings), e.g. "
                            'unset = ["optimizer.weight_decay", "scheduler"]')
        return None
    out = []
    ok = True
    for i, text in enumerate(value):
        ipos = origins.pop(("unset", i), None)
        at = f"{display}:{ipos.pos.value_line}:{ipos.pos.value_col}" if ipos and ipos.pos else where
        try:
            key_path = parse_key(text)
        except OverrideError as exc:
            res.problems.append(f"{at}: unset {text!r}: {exc}")
            ok = False
            continue
        if key_path[0] == "extends":
            res.problems.append(f"{at}: unset {text!r}: extends is not inherited")
            ok = False
            continue
        out.append((key_path, text, at))
    return out if ok else None


def _apply_unset(bdata: dict[str, Any], borigins: dict[tuple, Origin], unset: list[tuple[tuple, str, str]],
                 data: dict[str, Any], display: str, pdisplay: str, res: Resolved) -> dict[str, Any] | None:
    """``bdata`` (what the file inherits) without the keys ``unset`` names; each must exist there."""
    import copy

    if not unset:
        return bdata
    out = copy.deepcopy(bdata)
    ok = True
    for key_path, text, at in unset:
        if _has_path(data, key_path):
            res.problems.append(f"{at}: unset {text!r}: {display} also sets {text}; unset only removes inherited "
                                "keys, so drop one of the two")
            ok = False
            continue
        node: Any = out
        for depth, seg in enumerate(key_path):
            last = depth == len(key_path) - 1
            have = node if isinstance(node, dict) else {}
            fits = (isinstance(seg, str) and seg in have) or (
                isinstance(seg, int) and isinstance(node, list) and -len(node) <= seg < len(node))
            if not fits:
                here = format_path(key_path[:depth]) or "the spec"
                hint = did_you_mean(str(seg), [str(k) for k in have]) if isinstance(seg, str) else ""
                res.problems.append(f"{at}: unset {text!r}: {pdisplay} (what {display} extends) has no "
                                    f"{format_path(key_path[: depth + 1])} in {here}.{hint}")
                ok = False
                break
            if last:
                del node[seg]
                _drop_under(borigins, key_path)
                res.notes.append(f"{display}: unset {text} (inherited from {pdisplay})")
                break
            node = node[seg]
    return out if ok else None


def _has_path(d: Any, path: tuple) -> bool:
    for seg in path:
        if isinstance(seg, str) and isinstance(d, dict) and seg in d:
            d = d[seg]
        elif isinstance(seg, int) and isinstance(d, list) and -len(d) <= seg < len(d):
            d = d[seg]
        else:
            return False
    return True


def _component_tables(bdata: dict[str, Any], data: dict[str, Any]):
    """``(path, name_key, own keys)`` of the component tables that both ``bdata`` and ``data`` hold."""
    from plugtrain.core.spec.model import own_keys

    for sec, (cls, kind) in SECTIONS.items():
        if kind is None or sec in ("loggers", "metrics", "callbacks", "augmentations"):
            continue
        b, o = bdata.get(sec), data.get(sec)
        if not isinstance(b, dict) or not isinstance(o, dict):
            continue
        yield (sec,), ("dataset" if sec == "data" else "name"), set(own_keys(cls))
        if sec == "loss" and isinstance(b.get("optimizer"), dict) and isinstance(o.get("optimizer"), dict):
            yield ("loss", "optimizer"), "name", set()


def _switched_components(bdata: dict[str, Any], borigins: dict[tuple, Origin], data: dict[str, Any],
                         origins: dict[tuple, Origin], display: str, pdisplay: str,
                         res: Resolved) -> dict[str, Any]:
    """A child that names another component in a table drops the parent's parameters of the old one.

    ``[optimizer] name = "SGD"`` over a parent's AdamW must not inherit AdamW's ``weight_decay``: parameters
    belong to the component they were written for. The table's own keys (``[data] batch_size``,
    ``[scheduler] warmup_epochs``, ...) are kept; the child repeats any parameter it wants to keep."""
    import copy

    out = bdata
    for path, name_key, own in list(_component_tables(bdata, data)):
        b = _value_at(out, path)
        o = _value_at(data, path)
        old, new = b.get(name_key), o.get(name_key)
        if not isinstance(old, str) or not isinstance(new, str) or old == new:
            continue
        dropped = [k for k in b if k != name_key and k not in own and (path != ("loss",) or k != "optimizer")]
        if not dropped:
            continue
        if out is bdata:
            out = copy.deepcopy(bdata)
        table = _value_at(out, path)
        for k in dropped:
            del table[k]
            _drop_under(borigins, (*path, k))
        kept = [k for k in dropped if k in o]
        gone = [k for k in dropped if k not in o]
        what = f"[{format_path(path)}] {name_key} {old!r} (from {pdisplay}) becomes {new!r} in {display}"
        note = f"{what}: the parameters written for {old!r} are not inherited"
        if gone:
            note += f" ({', '.join(gone)} dropped"
            note += f"; {', '.join(kept)} set again here)" if kept else ")"
        res.notes.append(note)
    return out


def resolve(path: str | Path, overrides: list[str] | tuple[str, ...] = (), validate: bool = True) -> Resolved:
    """Read, compose, override and (unless ``validate`` is false) validate the spec at ``path``. Problems and warnings
    are one line each, control characters of the keys and values they quote escaped (:func:`printable`)."""
    from plugtrain.core.runtime.rundir import checking_spec

    with checking_spec(path):  # a plugin's check resolves paths relative to the spec (CheckContext.spec_dir)
        res = _resolve(path, overrides, validate)
    res.problems[:] = [printable(p, keep="") for p in res.problems]
    res.warnings[:] = [printable(w, keep="") for w in res.warnings]
    return res


def _resolve(path: str | Path, overrides: list[str] | tuple[str, ...], validate: bool) -> Resolved:
    display = str(path)
    res = Resolved(display, overrides=list(overrides))
    got = _read(Path(path), display, (), res)
    if got is None:
        return res
    res.data, res.origins = got
    base, applied = (copy.deepcopy(res.data) if overrides else None), []
    for text in overrides:
        try:
            key_path, value = parse_override(text)
            apply(res.data, key_path, value)
        except OverrideError as exc:
            res.problems.append(f"{display}: --set {text}: {exc}")
            continue
        applied.append((text, key_path, normalize(key_path, res.data)))
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
    located = sorted(((_where(res, pr, base, applied), pr) for pr in found), key=lambda x: x[0])
    for (_, where, note), pr in located:
        (res.warnings if pr.warning else res.problems).append(
            f"{where}: {'warning: ' if pr.warning else ''}{pr.message}{note}")
    return res


def _override_of(res: Resolved, path: tuple) -> Origin | None:
    """The override that set ``path`` or a table above it, if one did."""
    p = path
    while p:
        origin = res.origins.get(p)
        if origin is not None:
            return origin if origin.override else None
        p = p[:-1]
    return None


def _where(res: Resolved, pr: Any, base: dict[str, Any] | None,
           applied: list[tuple[str, tuple, tuple]]) -> tuple[tuple, str, str]:
    """:func:`_place`, or the override that changed the file's value inside (:func:`_inside_override`) when the place
    is in a file and names no override yet."""
    placed = _place(res, pr.path, pr.at, pr.related)
    if placed[0][0] == "~" or placed[2]:
        return placed
    return _inside_override(res, pr, base, applied) or placed


def _inside_override(res: Resolved, pr: Any, base: dict[str, Any] | None,
                     applied: list[tuple[str, tuple, tuple]]) -> tuple[tuple, str, str] | None:
    """The place of a problem about a value written in a file that an override changed inside (``--set
    'loggers[0]=1'`` makes ``loggers`` "not an array of tables"): the override, when the problem goes away without it
    (the spec validated again without the overrides below the problem's key); else None (the file's place)."""
    from plugtrain.core.spec.validate import validate as run_validation

    inside = [a for a in applied if len(a[2]) > len(pr.path) and a[2][:len(pr.path)] == pr.path]
    if base is None or not inside or _override_of(res, pr.path) is not None:
        return None
    data = copy.deepcopy(base)
    for text, key_path, _ in applied:
        if all(text != t for t, _, _ in inside):
            with contextlib.suppress(OverrideError):
                apply(data, key_path, copy.deepcopy(parse_override(text)[1]))
    if any((p.path, p.message) == (pr.path, pr.message) for p in run_validation(data)):
        return None
    cause = inside[-1][0]
    own = res.origins.get(pr.path)
    note = f" ({format_path(pr.path)} at {own.file}:{own.pos.line}:{own.pos.col})" if own and own.pos else ""
    return ("~", res.overrides.index(cause), 0), f"{res.path}: --set {cause}", note


def _place(res: Resolved, path: tuple, at: str, related: tuple = ()) -> tuple[tuple, str, str]:
    """(sort key, ``file:line:col`` or ``spec: --set ...``, note) for a problem about ``path``.

    When the component that a table names was named by an override, the override is part of the cause: a problem
    located in a file gets a note naming it; a problem with no place of its own in a file is the override's. A
    problem of a combination (``related`` keys) that an override brought about is the override's, with a note
    saying where the other key is written.
    """
    if related and _override_of(res, path) is None:
        cause = next((o for o in (_override_of(res, r) for r in related) if o is not None), None)
        if cause is not None:
            order = res.overrides.index(cause.override) if cause.override in res.overrides else 0
            own = res.origins.get(path)
            note = f" ({format_path(path)} at {own.file}:{own.pos.line}:{own.pos.col})" if own and own.pos else ""
            return ("~", order, 0), f"{res.path}: --set {cause.override}", note
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
            print(f"plugtrain: {printable(w, keep='')}", file=sys.stderr)


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
        spec = from_dict(res.data, source=res.path)
    except (KeyError, TypeError, ValueError) as exc:  # validation should have caught it: still no traceback
        raise SpecError([f"{res.path}: {exc}"]) from None
    spec.notes = list(res.notes)
    return spec


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


def dumps(spec: RunSpec, notes: bool = False) -> str:
    """The resolved spec as TOML that is itself a valid spec (``check --print``; the runtime may save it too);
    with ``notes``, what composing it did (a component switched by ``extends``, an ``unset``) as comment lines."""
    d = to_dict(spec)
    text = dumps_dict({k: d[k] for k in SECTIONS if k in d})
    if notes and spec.notes:
        head, _, rest = text.partition("\n")
        text = head + "\n" + "".join(f"# note: {n}\n" for n in spec.notes) + rest
    return text


__all__ = ["Origin", "Resolved", "SpecError", "deep_merge", "dumps", "dumps_dict", "format_path",
           "load_spec", "resolve", "resolve_dict"]
