"""What each CLI command does. The CLI only parses arguments and calls these."""

from __future__ import annotations

from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.hookspecs import KINDS
from plugtrain.core.registry import check_kind, get_registry


def list_components(kind: str | None = None, pattern: str | None = None, as_json: bool = False) -> int:
    """``plugtrain list [KIND] [PATTERN]``: every registered component, grouped by kind."""
    reg = get_registry()
    kinds = [check_kind(kind)] if kind else list(KINDS)
    comps = [c for k in kinds for c in reg.find(k, pattern)]
    if as_json:
        console.print_json([c.as_json() for c in comps])
        return 0
    if kind and pattern and not comps:
        raise PlugtrainError(f"no {kinds[0]} match {pattern!r}. Run `plugtrain list {kinds[0]}` to see them all.")
    rows = [
        (c.kind, c.name, c.plugin, f"{c.distribution}=={c.version}" if c.distribution else "", c.one_line)
        for c in comps
    ]
    console.table(f"plugtrain components ({len(rows)})", ["kind", "name", "plugin", "distribution", "summary"], rows)
    return 0


def show_component(kind: str, name: str, as_json: bool = False) -> int:
    """``plugtrain show KIND NAME``: summary, docstring and parameters of one component."""
    comp = get_registry().get(kind, name)
    params = [p.as_json() for p in comp.params]
    if as_json:
        console.print_json({"kind": comp.kind, "name": comp.name, "summary": comp.one_line, "doc": comp.doc,
                            "params": params})
        return 0
    console.echo(f"{comp.kind} {comp.name}  ({comp.plugin}, {comp.distribution}=={comp.version})")
    console.echo(comp.one_line)
    if comp.doc and comp.doc.strip() != comp.one_line:
        console.echo("")
        console.echo(comp.doc)
    console.echo("")
    rows = [(p["name"], p["annotation"], "required" if p["required"] else repr(comp.params[i].default))
            for i, p in enumerate(params)]
    if comp.accepts_any_kwargs:
        rows.append(("**kwargs", "", "any further keyword is passed through"))
    console.table("parameters", ["name", "annotation", "default"], rows)
    return 0


def list_plugins(as_json: bool = False) -> int:
    """``plugtrain plugins``: every entry point of the plugtrain group and what became of loading it."""
    plugins = get_registry().plugins
    if as_json:
        console.print_json([p.as_json() for p in plugins])
        return 0
    rows = [(p.name, p.dist_label, ", ".join(h.removeprefix("plugtrain_") for h in p.hooks), p.error or "")
            for p in plugins]
    console.table(f"plugtrain plugins ({len(rows)})", ["name", "distribution", "hooks", "error"], rows)
    return 0


def check_specs(paths: list[str], overrides: list[str], print_resolved: bool = False) -> int:
    """``plugtrain check SPEC...``: validate specs before any data or model is touched."""
    from plugtrain.core.spec import check_command

    return check_command(paths, overrides, print_resolved)


def print_schema() -> int:
    """``plugtrain schema``: the JSON Schema of the run spec, plugins included."""
    from plugtrain.core.schema import build_schema

    console.print_json(build_schema())
    return 0


def train(paths: list[str], overrides: list[str], **options: Any) -> int:
    """``plugtrain train SPEC...``: run each spec in order; non-zero if any failed."""
    from plugtrain.core.runtime import train_command

    return train_command(paths, overrides, **options)


def evaluate(run_dir: str, checkpoint: str, split: str, as_json: bool) -> int:
    from plugtrain.core.runtime import evaluate_command

    return evaluate_command(run_dir, checkpoint, split, as_json)


def predict(run_dir: str, images: list[str], checkpoint: str, top_k: int, as_json: bool) -> int:
    from plugtrain.core.runtime import predict_command

    return predict_command(run_dir, images, checkpoint, top_k, as_json)
