"""Hints for names and parameters that a library removed, so that an old spec gets told what replaced them.

A hint is used only when the name or parameter is really unknown (the registry lacks the name, the signature lacks the
parameter), so a hint can never reject something that works. Keys: ``"Name"`` for a component,
``"Name.param"`` for a parameter of one component and ``"*.param"`` for a parameter of any component of the kind; a
name pattern (``"myextra-*"``) answers every unknown name it matches (an extra that is not installed).

The hints come from the plugins, each from a module attribute of this shape::

    PLUGTRAIN_RETIRED = {"losses": {"OldLoss": "renamed to NewLoss in mylib 2.0"}}

(the built-in augmentations plugin has the albumentations 1.x -> 2.x table).
"""

from __future__ import annotations

from typing import Any


def retired_hint(table: dict[str, dict[str, str]], kind: str, name: str, param: str | None = None) -> str:
    """The hint for a removed component ``name`` (``param`` None) or a removed parameter of it, or ``""``."""
    hints = table.get(kind, {})
    if param is None:
        if name in hints:
            return hints[name]
        from fnmatch import fnmatchcase

        # a pattern (``"myextra-*"``): the names of a plugin that is not installed, answered with how to install it
        return next((h for k, h in hints.items() if "*" in k and "." not in k and fnmatchcase(name, k)), "")
    return hints.get(f"{name}.{param}") or hints.get(f"*.{param}", "")


def collect(plugins: list[Any]) -> dict[str, dict[str, str]]:
    """Every loaded plugin module's ``PLUGTRAIN_RETIRED``, merged in plugin order (a later plugin's hint wins)."""
    table: dict[str, dict[str, str]] = {}
    for info in plugins:
        if hasattr(info, "retired"):  # the catalog stores it: no need to import the plugin
            extra = info.retired
        else:
            extra = getattr(getattr(info, "module", None), "PLUGTRAIN_RETIRED", None)
        if isinstance(extra, dict):
            for kind, hints in extra.items():
                if isinstance(hints, dict):
                    table.setdefault(kind, {}).update({str(k): str(v) for k, v in hints.items()})
    return table
