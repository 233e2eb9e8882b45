"""The package's import graph between its parts has no cycle, and the core imports none of them (issue 22).

Every ``import`` / ``from ... import`` in ``plugtrain/`` (module level and inside functions, which is where most of
ours are) and every ``importlib.import_module("plugtrain...")`` is read with :mod:`ast`, without importing anything.
A part is a subpackage or top-level module: ``plugtrain.core``, ``.plugins``, ``.hub``, ``.inference``, ``.api``,
``.commands``, ``.sweep``, ``.slurm``, ``.entrypoints`` (``plugtrain.__main__`` belongs to the entry points). The
package's own ``__init__`` is the public facade, not a part: ``from plugtrain import Component`` is an import of the
module that defines ``Component`` (read from the facade's imports).
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugtrain"
PARTS = ("plugtrain.core", "plugtrain.plugins", "plugtrain.hub", "plugtrain.inference", "plugtrain.api",
         "plugtrain.commands", "plugtrain.sweep", "plugtrain.slurm", "plugtrain.entrypoints")

#: Edges allowed although they close a cycle, each with the work that removes it. The test fails once an edge here is
#: gone, so that the exception goes with it.
KNOWN: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _facade_names() -> dict[str, str]:
    """What the facade (``plugtrain/__init__.py``) re-exports, by name: the module it takes each from."""
    names = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plugtrain."):
            names.update({a.asname or a.name: node.module for a in node.names})
    return names


def _imported(node: ast.AST, module: str, is_package: bool, facade: dict[str, str]) -> list[str]:
    """The ``plugtrain`` modules an import statement (or ``import_module`` call) names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        if base == "plugtrain":  # the facade: a submodule by name, or the module that defines the name
            return [f"plugtrain.{a.name}" if (PACKAGE / f"{a.name}.py").is_file() or (PACKAGE / a.name).is_dir()
                    else facade.get(a.name, "plugtrain") for a in node.names]
        return [base]
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def _part(module: str) -> str | None:
    if module == "plugtrain.__main__":
        return "plugtrain.entrypoints"
    return next((p for p in PARTS if module == p or module.startswith(p + ".")), None)


@functools.lru_cache(maxsize=1)
def part_graph() -> dict[tuple[str, str], list[str]]:
    """``(part, part it imports) -> ["module:line", ...]`` over every file of the package."""
    facade = _facade_names()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        source = _part(module)
        if source is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _imported(node, module, path.name == "__init__.py", facade):
                dest = _part(target) if target.split(".")[0] == "plugtrain" else None
                if dest is not None and dest != source:
                    edges[(source, dest)].append(f"{module}:{node.lineno}")
    return edges


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Each cycle of the graph once (as its strongly connected component, in a stable order)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    found, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        reach = _reach(graph, start)
        component = sorted(n for n in reach if start in _reach(graph, n))
        if len(component) > 1 or start in graph[start]:
            found.append(component)
            seen.update(component)
    return found


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    out, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in out:
                out.add(nxt)
                todo.append(nxt)
    return out


def test_every_module_belongs_to_a_known_part():
    unknown = [_module_name(p) for p in PACKAGE.rglob("*.py") if _part(_module_name(p)) is None
               and _module_name(p) != "plugtrain"]
    assert not unknown, f"add these to PARTS (and place them in the layering): {unknown}"


def test_the_parts_import_each_other_without_a_cycle():
    edges = part_graph()
    left = cycles(set(edges) - KNOWN)
    where = {c: [f"{a} -> {b} ({', '.join(edges[(a, b)][:3])})" for a, b in edges if a in c and b in c]
             for c in map(tuple, left)}
    assert not left, f"import cycles between plugtrain's parts: {where}"


def test_the_known_exceptions_still_exist():
    gone = KNOWN - set(part_graph())
    assert not gone, f"{gone} no longer imported: remove it from KNOWN"


def test_the_core_imports_none_of_the_other_parts():
    edges = part_graph()
    out = {b: sites for (a, b), sites in edges.items() if a == "plugtrain.core"}
    assert not out, f"plugtrain.core imports {out}"


def test_inference_is_below_the_commands_and_the_api():
    edges = part_graph()
    for upper in ("plugtrain.commands", "plugtrain.api", "plugtrain.entrypoints", "plugtrain.sweep"):
        assert ("plugtrain.inference", upper) not in edges, edges[("plugtrain.inference", upper)]


def test_the_graph_reader_sees_function_level_relative_and_facade_imports():
    """The reader itself: an import inside a function, a relative import and a facade name all count."""
    tree = ast.parse("def f():\n    from ..commands import train\n    from plugtrain import Component\n"
                     "    import importlib; importlib.import_module('plugtrain.sweep.cv')\n")
    facade = {"Component": "plugtrain.core.registry"}
    found = [t for n in ast.walk(tree) for t in _imported(n, "plugtrain.core.x", False, facade) if t != "importlib"]
    assert [_part(t) for t in found] == ["plugtrain.commands", "plugtrain.core", "plugtrain.sweep"], found
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]


def test_the_hub_helpers_import_no_plugin():
    """``plugtrain.hub`` is what plugins declare their fetches with: below the plugins, the commands and the API."""
    edges = part_graph()
    assert not [b for (a, b) in edges if a == "plugtrain.hub" and b != "plugtrain.core"], edges
