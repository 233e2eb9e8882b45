"""Loading a run spec: TOML, ``extends``, ``--set`` overrides, validation. (Minimal first version.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.spec.model import RunSpec, from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(PlugtrainError):
    """One or more problems in a spec; ``problems`` holds one ``path:line:col: message`` string each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise SpecError([f"{path}: extends cycle: " + " -> ".join(str(p) for p in (*seen, path))])
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"{path}: {exc}"]) from None
    parent = d.pop("extends", None)
    if parent:
        d = _deep_merge(_read(path.parent / parent, (*seen, path)), d)
    return d


def _apply_override(d: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep:
        raise SpecError([f"--set {override}: expected KEY.PATH=VALUE"])
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = d
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def resolve_dict(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    d = _read(Path(path))
    for o in overrides:
        _apply_override(d, o)
    return d


def load_spec(path: str | Path, overrides: list[str] = ()) -> RunSpec:
    """Read, compose, override and validate the spec at ``path``; raise :class:`SpecError` listing every problem."""
    d = resolve_dict(path, overrides)
    try:
        return from_dict(d, source=str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError([f"{path}: {exc}"]) from None


def check_command(paths: list[str], overrides: list[str], print_resolved: bool = False) -> int:
    for p in paths:
        load_spec(p, overrides)
        print(f"{p}: OK")
    return 0
