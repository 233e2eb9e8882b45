"""``--set KEY.PATH=VALUE`` overrides: the key path may index arrays, the value is TOML.

Examples::

    --set optimizer.lr=3e-4
    --set 'backbone.name="convnext_atto"'          # strings keep their TOML quotes (the shell needs the '')
    --set 'augmentations.train[0].p=0.3'           # arrays by index (negative counts from the end)
    --set 'augmentations.train[1].transforms[0].size=[24, 24]'
    --set 'augmentations.train=[{ name = "HorizontalFlip" }]'

The value is strict TOML: a bare word is not taken for a string, because ``--set run.name=1e3`` and
``--set run.name=true`` would then silently mean different things; the error says how to quote.
"""

from __future__ import annotations

import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class OverrideError(ValueError):
    """A malformed override, or one that does not fit the spec's structure."""


_SEGMENT = re.compile(
    r"""\s*(?:(?P<bare>[A-Za-z0-9_-]+)|"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>[^']*)')\s*(?P<idx>(?:\[\s*-?\d+\s*\]\s*)*)"""
)


def parse_key(key: str) -> tuple:
    """``augmentations.train[0].p`` -> ``("augmentations", "train", 0, "p")``."""
    path: list[Any] = []
    pos = 0
    key = key.strip()
    if not key:
        raise OverrideError("the key is empty")
    while True:
        m = _SEGMENT.match(key, pos)
        if not m or m.end() == pos:
            raise OverrideError(f"cannot read the key {key!r} at {key[pos:]!r}: write dotted names with optional "
                                "[index], e.g. augmentations.train[0].p")
        if m.group("bare") is not None:
            path.append(m.group("bare"))
        elif m.group("dq") is not None:
            try:
                path.append(tomllib.loads(f'k = "{m.group("dq")}"')["k"])
            except tomllib.TOMLDecodeError as exc:  # a control character, an unknown escape: "\q"
                raise OverrideError(f"cannot read the key {key!r}: \"{m.group('dq')}\" is not a TOML string "
                                    f"({str(exc).split(' (at ')[0]})") from None
        else:
            path.append(m.group("sq"))
        path.extend(int(i) for i in re.findall(r"-?\d+", m.group("idx")))
        pos = m.end()
        if pos == len(key):
            return tuple(path)
        if key[pos] != ".":
            raise OverrideError(f"cannot read the key {key!r} at {key[pos:]!r}")
        pos += 1


def parse_value(raw: str, key: str) -> Any:
    """The TOML value ``raw``; a clear error (with the quoting to use) when it is not one."""
    text = raw.strip()
    try:
        doc = tomllib.loads(f"v = {text}\n")
    except tomllib.TOMLDecodeError as exc:
        doc = None
        reason = str(exc)
    if doc is not None and list(doc) == ["v"]:
        return doc["v"]
    if doc is not None:
        reason = "more than one value"
    if text and re.fullmatch(r"[^\s\"'\[\]{}=,#]+", text):
        quoted = '"' + text.replace("\\", "\\\\") + '"'
        raise OverrideError(f"the value {text!r} is not TOML: a string needs double quotes, and the shell needs "
                            f"single quotes around them: --set '{key}={quoted}'")
    if not text:
        raise OverrideError("the value is empty: give a TOML value after '=', e.g. 0.1, true, \"text\" or [1, 2]")
    raise OverrideError(f"the value {text!r} is not TOML ({reason.split(' (at ')[0]}); strings need double quotes, "
                        'arrays look like [1, 2], tables like { name = "x" }')


def parse_override(text: str) -> tuple[tuple, Any]:
    """``"optimizer.lr=3e-4"`` -> ``(("optimizer", "lr"), 0.0003)``."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise OverrideError("expected KEY.PATH=VALUE, e.g. --set optimizer.lr=3e-4")
    path = parse_key(key)
    if path[0] == "extends":
        raise OverrideError("extends cannot be overridden: write a spec file that extends the one you want")
    if isinstance(path[0], int):
        raise OverrideError("the key must start with a section name, e.g. augmentations.train[0].p")
    return path, parse_value(raw, key.strip())


def apply(d: dict[str, Any], path: tuple, value: Any) -> None:
    """Set ``path`` in ``d`` to ``value``, creating missing tables; indexes must exist (negative ones count back)."""
    from plugtrain.core.spec.tomlpos import format_path

    node: Any = d
    for depth, seg in enumerate(path):
        last = depth == len(path) - 1
        here = format_path(path[:depth]) or "the spec"
        if isinstance(seg, int):
            if not isinstance(node, list):
                raise OverrideError(f"{here} is not an array, so [{seg}] cannot index it")
            if not -len(node) <= seg < len(node):
                raise OverrideError(f"{here} has {len(node)} item{'s' if len(node) != 1 else ''}: "
                                    f"index [{seg}] is out of range")
            if last:
                node[seg] = value
                return
            node = node[seg]
            continue
        if not isinstance(node, dict):
            raise OverrideError(f"{here} is not a table, so it has no key {seg!r}")
        if last:
            node[seg] = value
            return
        nxt = path[depth + 1]
        if seg not in node:
            if isinstance(nxt, int):
                raise OverrideError(f"{format_path(path[: depth + 1])} does not exist, so [{nxt}] cannot index it")
            node[seg] = {}
        node = node[seg]


def normalize(path: tuple, d: dict[str, Any]) -> tuple:
    """``path`` with negative indexes made positive (for pointing at the value it set)."""
    out: list[Any] = []
    node: Any = d
    for seg in path:
        if isinstance(seg, int) and isinstance(node, list) and seg < 0:
            seg = len(node) + seg
        out.append(seg)
        try:
            node = node[seg]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)
