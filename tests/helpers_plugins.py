"""Helpers for tests that need real plugins: a ``*.dist-info`` on a temporary path, and plugtrain in a subprocess.

A plugin made here is found exactly as an installed one is: ``importlib.metadata`` reads the ``entry_points.txt`` of
a ``*.dist-info`` directory on ``sys.path``, and the ``plugtrain`` command runs in a real child process with that
directory on ``PYTHONPATH``. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN_SRC = REPO / "examples" / "plugtrain-example-plugin" / "src"
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "plugins"

#: Environment variables that change how plugins load; cleared for every child unless a test sets them.
_PLUGIN_ENV = ("PLUGTRAIN_DISABLE_PLUGINS", "PLUGTRAIN_STRICT_PLUGINS", "PLUGTRAIN_DEBUG")


def make_dist(
    root: Path,
    dist: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str] | None = None,
    version: str = "1.0",
) -> Path:
    """Lay out an installed distribution under ``root``: ``<dist>-<version>.dist-info`` plus module sources.

    ``entry_points`` maps entry-point names to module paths (the ``[plugtrain]`` section). ``modules`` maps dotted
    module names to source text (dedented); packages get an ``__init__.py``. Returns ``root`` (for PYTHONPATH).
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[plugtrain]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for dotted, source in (modules or {}).items():
        parts = dotted.split(".")
        folder = root
        for pkg in parts[:-1]:
            folder = folder / pkg
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
    return root


def make_example_dist(root: Path) -> Path:
    """The example plugin as ``pip install`` would leave it: a dist-info here, the source on the path beside it."""
    try:
        from tomllib import loads
    except ModuleNotFoundError:  # Python 3.10
        from tomli import loads

    project = loads((EXAMPLE_PLUGIN_SRC.parent / "pyproject.toml").read_text())["project"]
    make_dist(root, project["name"], project["entry-points"]["plugtrain"], version=project["version"])
    return root


def fixture_dist(root: Path, dist: str, entry_points: Mapping[str, str], version: str = "1.0") -> Path:
    """A distribution whose entry points name modules of ``tests/fixtures/plugins`` (copied beside the dist-info)."""
    modules = {mod: (FIXTURE_PLUGINS / f"{mod}.py").read_text() for mod in entry_points.values()}
    return make_dist(root, dist, entry_points, modules, version=version)


def build_plugin_dists(base: Path) -> dict[str, list[Path]]:
    """Every test plugin, each in its own folder: name -> the paths to put on PYTHONPATH (or sys.path)."""
    clash = base / "clash"
    fixture_dist(clash, "clash-a-dist", {"clasha": "pt_clash_a"}, version="1.0")
    fixture_dist(clash, "clash-b-dist", {"clashb": "pt_clash_b"}, version="2.0")
    return {
        "example": [make_example_dist(base / "example"), EXAMPLE_PLUGIN_SRC],
        "broken": [fixture_dist(base / "broken", "broken-dist", {"broken": "pt_broken_import"}, version="2.3")],
        "hookfail": [fixture_dist(base / "hookfail", "hookfail-dist", {"hookfail": "pt_hook_raises"}, version="1.1")],
        "typo": [fixture_dist(base / "typo", "typo-dist", {"typo": "pt_typo_hook"}, version="0.3")],
        "clash": [clash],
        "context": [fixture_dist(base / "context", "context-dist", {"ctx": "pt_context"})],
        "badcomp": [fixture_dist(base / "badcomp", "badcomp-dist", {"badcomp": "pt_bad_components"})],
    }


def plugin_env(paths: Iterable[Path | str] = (), **env: str) -> dict[str, str]:
    """The environment for a child process: ``paths`` on PYTHONPATH, plain output, plugin switches from ``env``."""
    out = {k: v for k, v in os.environ.items() if k not in _PLUGIN_ENV}
    pythonpath = [str(p) for p in paths]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(pythonpath)
    out["PLUGTRAIN_PLAIN"] = "1"
    out.update(env)
    return out


def run_plugtrain(*args: str, paths: Iterable[Path | str] = (), timeout: float = 300, **env: str):
    """``python -m plugtrain ARGS`` in a child process; returns the CompletedProcess (text, both streams captured)."""
    return subprocess.run(
        [sys.executable, "-m", "plugtrain", *args],
        env=plugin_env(paths, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def run_python(code: str, paths: Iterable[Path | str] = (), timeout: float = 300, **env: str):
    """``python -c CODE`` in a child process with the same environment rules as :func:`run_plugtrain`."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=plugin_env(paths, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def json_out(proc: subprocess.CompletedProcess) -> object:
    """The parsed JSON stdout of a child that must have succeeded."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The child failed with ``code``, one readable message on stderr containing every needle, and no traceback."""
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in stderr:\n{proc.stderr}"
    return proc.stderr
