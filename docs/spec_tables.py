"""The generated tables of ``docs/spec.md``: every section's keys with their types, defaults and allowed values, and
the built-in components a spec names, read from the code (the spec model and the registry).

``docs/spec.md`` holds blocks between ``<!-- generated: WHAT -->`` and ``<!-- end generated -->``. This script
rewrites their tables from the code and keeps, for section tables, the *meaning* column written by hand (by key). A
key the code has and the document lacks gets an empty meaning, which the test refuses; a key the document has and the
code lost disappears. So the reference cannot go stale: ``tests/plugins/test_spec_reference.py`` fails until::

    python docs/spec_tables.py --write      # regenerate the tables in place (then fill in any empty meaning)
    python docs/spec_tables.py --check      # exit 1 when docs/spec.md differs from what the code says

``WHAT`` is ``section NAME`` (a section's own keys), ``component KIND NAME`` (one built-in component's parameters)
or ``components KIND [brief]`` (the built-in components of a kind, one line each; ``brief``: parameter names only).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent / "spec.md"
BLOCK = re.compile(r"(<!-- generated: (?P<what>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|(?P<rest>.*)\|\s*$")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _toml(value: Any) -> str:
    from plugtrain.core.spec.typecheck import toml_literal

    return toml_literal(value)


def _default(field: Any) -> str:
    import attrs

    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return "(computed)"
        try:
            default = default.factory()
        except Exception:  # a factory that needs the registry: described in the meaning column
            return "(computed)"
        if isinstance(default, list) and default and not isinstance(default[0], (str, int, float, bool)):
            return "(computed)"
    if default is None:
        return "unset"
    return f"`{_toml(default)}`"


def _type(section: str, key: str, field: Any) -> str:
    from plugtrain.core.hookspecs import SINGULAR
    from plugtrain.core.spec.model import SECTIONS
    from plugtrain.core.spec.typecheck import describe
    from plugtrain.core.spec.validate import field_type

    special = {
        ("data", "dataset"): "str: a dataset's name",
        ("loss", "optimizer"): "table naming an optimizer",
        ("augmentations", "train"): "array of augmentation tables",
        ("augmentations", "val"): "array of augmentation tables",
    }
    if (section, key) in special:
        return special[(section, key)]
    if key == "name" and SECTIONS[section][1] is not None:
        return f"str: a {SINGULAR[SECTIONS[section][1]]}'s name"
    return describe(field_type(field))


def _allowed(field: Any) -> str:
    from plugtrain.core.spec.validate import field_range

    rng = field_range(field)
    return rng.text() if rng is not None else ""


def section_rows(section: str) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, allowed)`` for each key the section itself defines (component parameters aside)."""
    from plugtrain.core.spec.model import SECTIONS
    from plugtrain.core.spec.validate import section_fields

    cls, _ = SECTIONS[section]
    fields = section_fields(cls)
    rows = []
    for key, field in fields.items():
        rows.append((key, _type(section, key, field), _default(field), _allowed(field)))
    return rows


def section_table(section: str, meanings: dict[str, str]) -> str:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for key, typ, default, allowed in section_rows(section):
        lines.append(f"| `{key}` | {_cell(typ)} | {_cell(default)} | {_cell(allowed)} | {meanings.get(key, '')} |")
    return "\n".join(lines) + "\n"


def _builtin(kind: str) -> list[Any]:
    from plugtrain.core.registry import get_registry

    return [c for c in get_registry().components(kind) if c.distribution == "plugtrain" and not c.runtime_only]


def _param_cells(comp: Any) -> list[tuple[str, str, str]]:
    from plugtrain.core.spec.typecheck import describe, factory_namespace, from_annotation, toml_view

    ns = factory_namespace(comp.factory)
    out = []
    for p in comp.params:
        typ = describe(toml_view(from_annotation(p.annotation, ns)))
        default = "required" if p.required else ("unset" if p.default is None else f"`{_toml(p.default)}`")
        out.append((p.name, typ, default))
    return out


def component_table(kind: str, name: str) -> str:
    from plugtrain.core.registry import get_registry

    comp = get_registry().get(kind, name)
    lines = ["| parameter | type | default |", "|---|---|---|"]
    for key, typ, default in _param_cells(comp):
        lines.append(f"| `{key}` | {_cell(typ)} | {_cell(default)} |")
    return "\n".join(lines) + "\n"


def _default_for(comp: Any) -> str:
    """`` *(default)*`` for a component a spec gets when it names none of its kind (``*(default: TASK)*`` for
    metrics, by task)."""
    tasks = sorted(r.split(":", 1)[1] for r in comp.roles if r.startswith("default:"))
    if tasks:
        return f" *(default: {', '.join(tasks)})*"
    return " *(default)*" if "default" in comp.roles else ""


def components_table(kind: str, brief: bool = False) -> str:
    """One line per built-in component of ``kind``: its parameters (``brief``: names only) and summary."""
    lines = ["| name | parameters | what it is |", "|---|---|---|"]
    for comp in _builtin(kind):
        cells = _param_cells(comp)
        if brief:
            params = ", ".join(f"`{k}`" + (" (required)" if d == "required" else "") for k, _, d in cells)
        else:
            params = "; ".join(f"`{k}`: {typ}" + (" (required)" if d == "required" else f" = {d}")
                               for k, typ, d in cells)
        lines.append(f"| `{comp.name}`{_default_for(comp)} | {_cell(params or '(none)')} | {_cell(comp.one_line)} |")
    return "\n".join(lines) + "\n"


def _meanings(body: str) -> dict[str, str]:
    """key -> the meaning column of an existing section table."""
    out = {}
    for line in body.splitlines():
        m = _ROW.match(line)
        if m:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", m.group("rest"))]
            out[m.group("key")] = cells[-1] if len(cells) >= 4 else ""
    return out


def generate(what: str, body: str) -> str:
    words = what.split()
    if words[0] == "section" and len(words) == 2:
        return section_table(words[1], _meanings(body))
    if words[0] == "component" and len(words) == 3:
        return component_table(words[1], words[2])
    if words[0] == "components" and len(words) in (2, 3) and words[2:] in ([], ["brief"]):
        return components_table(words[1], brief=len(words) == 3)
    raise ValueError(f"unknown generated block {what!r}")


def render(doc: str) -> str:
    """``doc`` with every generated block regenerated from the code."""
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("what"), m.group("body")) + m.group(4), doc)


def blocks(doc: str) -> list[str]:
    return [m.group("what") for m in BLOCK.finditer(doc)]


def empty_meanings(doc: str) -> list[str]:
    """``section.key`` of every section-table row whose meaning is empty."""
    out = []
    for m in BLOCK.finditer(doc):
        words = m.group("what").split()
        if words[0] == "section":
            out += [f"{words[1]}.{k}" for k, v in _meanings(m.group("body")).items() if not v]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite docs/spec.md in place")
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/spec.md is not what the code says")
    args = ap.parse_args(argv)
    doc = DOC.read_text(encoding="utf-8")
    new = render(doc)
    if args.write:
        DOC.write_text(new, encoding="utf-8")
    if args.check and (new != doc or empty_meanings(new)):
        print(f"{DOC}: stale (or empty meanings: {', '.join(empty_meanings(new)) or 'none'}); "
              "run python docs/spec_tables.py --write", file=sys.stderr)
        return 1
    if not args.write and not args.check:
        sys.stdout.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
