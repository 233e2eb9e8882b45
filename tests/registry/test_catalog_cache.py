"""The component catalog (:mod:`plugtrain.core.catalog`): the same answers as the live registry, seen to change when
a plugin distribution is installed, upgraded, removed or edited, and never broken by a bad cache file.

Plugins are real distributions (a ``*.dist-info`` on a folder of ``PYTHONPATH``, read by ``importlib.metadata``);
commands run as real child processes. The cache lives in a temporary folder (``PLUGTRAIN_CACHE_DIR``), never the
user's.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env, tiny_spec
from helpers_plugins import EXAMPLE_PLUGIN_SRC, make_dist, make_example_dist

from plugtrain.core.hookspecs import KINDS

#: Every installed plugin but the built-in losses: their libraries (timm, albumentations) would make each rebuild of
#: the catalog in these tests take seconds.
HEAVY = ",".join(ep.name for ep in importlib.metadata.entry_points(group="plugtrain") if ep.name != "losses")

PLUGIN_V1 = '''
"""A test plugin: writes a line to MARKER whenever it is imported."""
from pathlib import Path

from plugtrain import Component, hookimpl

with open({marker!r}, "a") as f:
    f.write("imported\\n")


def cat_loss(weight: float = 0.5, name: str = "a"):
    """{summary}"""
    raise NotImplementedError


@hookimpl
def plugtrain_losses():
    return [Component("CatLoss", cat_loss)]
'''


def _listed(env: dict[str, str], *args: str) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-m", "plugtrain", "list", "losses", "--json", *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return {c["name"]: c for c in json.loads(proc.stdout)}


def _catalogs(cache: Path) -> list[Path]:
    return [p for p in (cache / "catalog").glob("*.json") if p.name.count(".") == 1]


def test_install_edit_upgrade_remove_are_seen_and_a_fresh_catalog_imports_no_plugin(tmp_path: Path) -> None:
    site, cache, marker = tmp_path / "site", tmp_path / "cache", tmp_path / "imports.txt"
    site.mkdir()
    env = subprocess_env(PYTHONPATH=str(site), PLUGTRAIN_CACHE_DIR=str(cache), PLUGTRAIN_DISABLE_PLUGINS=HEAVY)
    imports = lambda: marker.read_text().count("imported") if marker.exists() else 0  # noqa: E731

    assert "CatLoss" not in _listed(env)
    make_dist(site, "pt-cat-dist", {"ptcat": "pt_cat_plugin"},  # installed
              {"pt_cat_plugin": PLUGIN_V1.format(marker=str(marker), summary="First summary.")}, version="1.0")
    first = _listed(env)["CatLoss"]
    assert (first["summary"], first["version"]) == ("First summary.", "1.0")
    assert imports() == 1
    assert _listed(env)["CatLoss"] == first
    assert imports() == 1, "a fresh catalog must answer without importing the plugin"
    assert len(_catalogs(cache)) == 1

    (site / "pt_cat_plugin.py").write_text(PLUGIN_V1.format(marker=str(marker), summary="Edited summary, longer."))
    assert _listed(env)["CatLoss"]["summary"] == "Edited summary, longer."  # edited

    shutil.rmtree(site / "pt_cat_dist-1.0.dist-info")  # upgraded: pip replaces the dist-info
    make_dist(site, "pt-cat-dist", {"ptcat": "pt_cat_plugin"}, version="2.0")
    assert _listed(env)["CatLoss"]["version"] == "2.0"

    shutil.rmtree(site / "pt_cat_dist-2.0.dist-info")  # removed
    assert "CatLoss" not in _listed(env)


GARBAGE = [b"", b"\x00\xff{not json", None]  # None: the good file with one name changed (its SHA-256 no longer matches)


def test_a_corrupt_catalog_file_never_breaks_a_command_and_is_rebuilt(tmp_path: Path) -> None:
    env = subprocess_env(PLUGTRAIN_CACHE_DIR=str(tmp_path), PLUGTRAIN_DISABLE_PLUGINS=HEAVY)
    good = _listed(env)
    (path,) = _catalogs(tmp_path)
    for garbage in GARBAGE:
        path.write_bytes(garbage if garbage is not None else
                         path.read_bytes().replace(b'"CrossEntropy"', b'"CrossEntropx"', 1))
        assert _listed(env) == good, garbage
        assert b'"CrossEntropy"' in path.read_bytes(), "rebuilt in place"
    shutil.rmtree(tmp_path / "catalog")
    (tmp_path / "catalog").write_text("a file where the folder goes")  # the cache cannot be written at all
    assert _listed(env) == good


# -- the same answers as the live registry ---------------------------------------------------------------------------


COMPARE = r'''
import functools, json, sys
from plugtrain.core.catalog import catalog_path, get_catalog, load
from plugtrain.core.hookspecs import KINDS
from plugtrain.core.registry import get_registry
from plugtrain.core.spec.schema import build_schema
from plugtrain.core.spec.typecheck import factory_namespace, from_annotation, toml_view
from plugtrain.core.errors import PlugtrainError

get_catalog()  # builds the file when missing
cat = load(catalog_path())
live = get_registry()
out = {"counts": {}, "diffs": []}

def view(c):
    return {"kind": c.kind, "name": c.name, "plugin": c.plugin, "distribution": c.distribution, "version": c.version,
            "summary": c.summary, "one_line": c.one_line, "doc": c.doc, "roles": sorted(c.roles), "fits": repr(c.fits),
            "runtime_only": c.runtime_only, "qualified": c.qualified_name, "any_kwargs": c.accepts_any_kwargs,
            "json": c.as_json(), "params": [(p.as_json(), repr(p.default), p.annotation_str) for p in c.params]}

for kind in KINDS:
    a, b = live._loaded(kind), cat._loaded(kind)
    out["counts"][kind] = len(b)
    if [view(c) for c in a] != [view(c) for c in b]:
        out["diffs"].append(kind)
    seen = set()
    for c, e in zip(a, b):
        f = c.factory.func if isinstance(c.factory, functools.partial) else c.factory
        if (id(f), e._d["params"]) in seen:  # timm's backbones share one factory and one stored signature
            continue
        seen.add((id(f), e._d["params"]))
        ns = factory_namespace(c.factory)
        for p, q in zip(c.params, e.params):
            if q.toml_type is not None and toml_view(from_annotation(p.annotation, ns)) != q.toml_type:
                out["diffs"].append(f"{kind} {c.name} {p.name}: type")
    for name in ("nosuchthing", "Foo:bar"):
        msgs = []
        for reg in (live, cat):
            try:
                reg.get(kind, name)
            except PlugtrainError as exc:
                msgs.append(str(exc))
        if msgs[0] != msgs[1]:
            out["diffs"].append(f"{kind} get({name}): {msgs}")
    if [c.name for c in live.find(kind, "*a*")] != [c.name for c in cat.find(kind, "*a*")]:
        out["diffs"].append(f"{kind} find")
out["plugins"] = [p.as_json() for p in live.plugins] == [p.as_json() for p in cat.plugins]
cat.cached("schema", lambda: build_schema(live))  # `plugtrain schema` reads it from now on
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict]:
    """The example plugin installed, a cache of this module's own; the catalog and the schema built there by a
    script that compares every component of the catalog with the live registry's: (environment, what it found)."""
    base = tmp_path_factory.mktemp("catalog-example")
    root = make_example_dist(base / "site")
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(root), str(EXAMPLE_PLUGIN_SRC)]),
                         PLUGTRAIN_CACHE_DIR=str(base / "cache"))
    proc = subprocess.run([sys.executable, "-c", COMPARE], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_catalog_equals_the_live_registry_for_every_builtin_and_the_example_plugin(example) -> None:
    env, out = example
    assert out["diffs"] == []
    assert out["plugins"]
    assert all(out["counts"][k] for k in KINDS if k != "tasks"), out["counts"]
    assert out["counts"]["backbones"] > 100
    assert any(c["plugin"] == "example" for c in _listed(env).values())


def _imported(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``plugtrain ARGS`` with ``-X importtime``: the process, and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "plugtrain", *args], capture_output=True,
                          text=True, timeout=600, env=env)
    tops = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:")}
    return proc, tops


@pytest.mark.slow
def test_with_a_fresh_catalog_list_show_schema_import_no_torch_and_check_no_timm(example, tmp_path: Path) -> None:
    env, _ = example
    for args in (("list",), ("show", "losses", "CrossEntropy"), ("show", "backbones", "resnet18"), ("schema",)):
        proc, tops = _imported(env, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert not {"torch", "timm", "albumentations"} & tops, (args, sorted(tops))
    spec = tiny_spec(tmp_path)
    proc, tops = _imported(env, "check", str(spec))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]
    assert "timm" not in tops, "check reads signatures from the catalog; only the plugins' validators run"
    bad = spec.read_text().replace('name = "CrossEntropy"', 'name = "CrossEntropy"\nlabel_smoothing = 2')
    spec.write_text(bad)
    proc, tops = _imported(env, "check", str(spec))
    assert proc.returncode == 2 and "timm" not in tops
    line = bad.splitlines().index("label_smoothing = 2") + 1
    assert f"{spec}:{line}:19: loss.label_smoothing" in proc.stderr and "in [0, 1]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
