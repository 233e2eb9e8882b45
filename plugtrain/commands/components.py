"""``plugtrain list``, ``show`` and ``plugins``: what the registry holds, as tables or JSON.

``list`` and ``show`` read the component catalog (:mod:`plugtrain.core.catalog`): no plugin is imported while it is
fresh. ``list --pretrained`` and ``plugins`` ask the live registry (the first runs plugin code, the second reports
what loading every plugin does).
"""

from __future__ import annotations

from typing import Any

from plugtrain.core import console
from plugtrain.core.catalog import get_catalog
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.hookspecs import KINDS
from plugtrain.core.registry import check_kind, get_registry


def list_components(kind: str | None = None, pattern: str | None = None, *, as_json: bool = False,
                    pretrained: bool = False) -> int:
    """``plugtrain list [KIND] [PATTERN] [--json] [--pretrained]``: every registered component, grouped by kind.

    ``plugtrain list 'resnet*'`` (a glob where the kind goes) searches every kind. ``--pretrained`` (backbones only)
    keeps the backbones with pretrained weights, listed with their tags.
    """
    reg = get_catalog()
    if kind and pattern is None and kind not in KINDS and any(ch in kind for ch in "*?["):
        kind, pattern = None, kind
    if pretrained:
        if kind is not None and check_kind(kind) != "backbones":
            raise PlugtrainError(f"--pretrained lists backbones only, not {kind}: run `plugtrain list backbones "
                                 "--pretrained`")
        return _list_pretrained(get_registry(), pattern, as_json)
    kinds = [check_kind(kind)] if kind else list(KINDS)
    comps = [c for k in kinds for c in reg.find(k, pattern)]
    if as_json:
        console.print_json([c.as_json() for c in comps])
        return 0
    if pattern and not comps:
        what = kinds[0] if kind else "components"
        command = f"plugtrain list {kinds[0]}" if kind else "plugtrain list"
        raise PlugtrainError(f"no {what} match {pattern!r}. Run `{command}` to see them all.")
    rows = [(c.kind, c.name, c.plugin, _dist_label(c.distribution, c.version), plain_text(c.one_line)) for c in comps]
    console.table(f"plugtrain components ({len(rows)})", ["kind", "name", "plugin", "distribution", "summary"], rows)
    return 0


def _list_pretrained(reg: Any, pattern: str | None, as_json: bool) -> int:
    """The backbones whose plugin names pretrained weights for them (its module's ``PLUGTRAIN_PRETRAINED``:
    ``tags(factory) -> [(tag, reference), ...]``, the default first), with those tags."""
    found = []
    for comp in reg.find("backbones", pattern):
        info = reg.plugin(comp.plugin)
        tags_of = getattr(getattr(info, "module", None), "PLUGTRAIN_PRETRAINED", None)
        tags = list(tags_of(comp.factory) or ()) if callable(tags_of) else []
        if tags:
            found.append((comp, tags))
    if as_json:
        console.print_json([{**c.as_json(), "pretrained_tags": [t for t, _ in tags],
                             "pretrained_weights": {t: ref for t, ref in tags}} for c, tags in found])
        return 0
    if not found:
        what = f" match {pattern!r}" if pattern else " are registered"
        raise PlugtrainError(f"no backbones with pretrained weights{what}. Run `plugtrain list backbones "
                             "--pretrained` to see them all.")
    rows = [(c.name, c.plugin, len(tags), ", ".join(t for t, _ in tags)) for c, tags in found]
    console.table(f"plugtrain backbones with pretrained weights ({len(rows)}; the first tag is what "
                  "`pretrained = true` loads)", ["name", "plugin", "tags", "pretrained tags"], rows)
    return 0


def _dist_label(distribution: str, version: str) -> str:
    return f"{distribution}=={version}" if distribution else "no distribution"


def show_component(kind: str, name: str, *, as_json: bool = False) -> int:
    """``plugtrain show KIND NAME [--json]``: summary, docstring and parameters of one component."""
    comp = get_catalog().get(kind, name)
    params = [p.as_json() for p in comp.params]
    if as_json:
        console.print_json({"kind": comp.kind, "name": comp.name, "summary": comp.one_line, "doc": comp.doc,
                            "params": params})
        return 0
    console.echo(f"{comp.kind} {comp.name}  (plugin {comp.plugin}, {_dist_label(comp.distribution, comp.version)})")
    summary = plain_text(comp.one_line)
    console.echo(summary)
    doc = plain_text(comp.doc.strip())
    if doc.startswith(summary):  # the summary is the docstring's first line: do not print it twice
        doc = doc[len(summary):].strip()
    if doc:
        console.echo("")
        console.echo(doc)
    console.echo("")
    rows = [(p.name, p.annotation_str, "required" if p.required else repr(p.default)) for p in comp.params]
    if comp.accepts_any_kwargs:
        rows.append(("**kwargs", "", "any further keyword is passed through"))
    if rows:
        console.table("parameters", ["name", "annotation", "default"], rows)
    else:
        console.echo("no parameters")
    return 0


def list_plugins(*, as_json: bool = False) -> int:
    """``plugtrain plugins [--json]``: every entry point of the plugtrain group and what became of loading it.

    Every hook is called, so that a hook that raises shows up here, not only the first time its kind is used.
    """
    reg = get_registry()
    reg.all_components()
    plugins = reg.plugins
    if as_json:
        console.print_json([p.as_json() for p in plugins])
        return 0
    rows = [(p.name, p.dist_label, ", ".join(h.removeprefix("plugtrain_") for h in p.hooks), p.error or "")
            for p in plugins]
    console.table(f"plugtrain plugins ({len(rows)})", ["name", "distribution", "hooks", "error"], rows)
    return 0


def plain_text(text: str) -> str:
    """Docstring markup as a reader sees it: ````x```` and ``:role:`x```` become ``x`` (the text of tables and
    ``show``; JSON keeps the docstring as written)."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    return text.replace("``", "")
