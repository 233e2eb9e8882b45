"""plugtrain without its extras: the core must not need ``extras/plugtrain-mlflow`` or ``extras/plugtrain-wandb``.

``make test`` installs both extras (and mlflow and wandb) into the venv, so the rest of this suite always runs with
them present. Here a child interpreter is given a view of the venv's site-packages from which those distributions are
gone: every entry of site-packages is symlinked into a temporary folder except the extras' ``*.dist-info`` (so their
entry points do not exist; any other installed plugtrain plugin is left out likewise), their ``.pth`` files (so their ``src`` folders are not on ``sys.path``), and the
``mlflow``/``wandb`` distributions with every top-level file their RECORD lists (so the libraries cannot be imported
either). The child runs with ``-S`` (``site`` not imported: no ``.pth`` file of the real site-packages is processed)
and ``PYTHONPATH=<repo>:<view>``: plugtrain's own code from the repository, its own dist-info (the built-in plugins'
entry points) from the view. That is what a fresh venv with only ``pip install -e .`` would see, made in a few
milliseconds instead of a venv and an install. Nothing is mocked: the child is the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, tiny_spec

#: The distributions an "extras absent" environment does not have (normalized names).
HIDDEN = {"plugtrain-mlflow", "plugtrain-wandb", "mlflow", "mlflow-skinny", "mlflow-tracing", "wandb",
          "plugtrain-segmentation", "segmentation-models-pytorch"}
EXTRA_MODULES = ("plugtrain_mlflow", "plugtrain_wandb", "mlflow", "wandb", "plugtrain_segmentation",
                 "segmentation_models_pytorch")


def _dist_name(info: Path) -> str | None:
    try:
        for line in (info / "METADATA").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("name:"):
                return line.split(":", 1)[1].strip().lower().replace("_", "-").replace(".", "-")
            if not line.strip():
                break
    except OSError:
        return None
    return None


def _has_plugtrain_entry_points(info: Path) -> bool:
    """Any other plugtrain plugin installed here (the example plugin, say) is left out too: only the core remains."""
    try:
        lines = (info / "entry_points.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.strip() == "[plugtrain]" for line in lines)


def site_view_without_extras(root: Path) -> tuple[Path, set[str]]:
    """Symlink every entry of the venv's site-packages into ``root`` except what the hidden distributions installed.
    Returns the view and the names left out."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden: set[str] = set()
    for info in site.glob("*.dist-info"):
        name = _dist_name(info)
        if name not in HIDDEN and not (name != "plugtrain" and _has_plugtrain_entry_points(info)):
            continue
        hidden.add(info.name)
        try:
            record = (info / "RECORD").read_text(encoding="utf-8").splitlines()
        except OSError:
            record = []
        for line in record:
            top = line.split(",", 1)[0].split("/", 1)[0]
            if top and top != ".." and not top.endswith(".dist-info"):
                hidden.add(top)
    root.mkdir(parents=True)
    for entry in site.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    return root, hidden


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """``bare(*args)``: ``python -S -m plugtrain ARGS`` in the environment without the extras."""
    base = tmp_path_factory.mktemp("no-extras")
    view, hidden = site_view_without_extras(base / "site-packages")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PLUGTRAIN_", "PYTHON", "MLFLOW_", "WANDB_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(view)]), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PLUGTRAIN_PLAIN="1")

    def run(*args: str, module: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-S", *(["-m", "plugtrain"] if module else []), *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=base)

    run.hidden = hidden  # type: ignore[attr-defined]
    run.base = base  # type: ignore[attr-defined]
    return run


def test_the_extras_and_their_libraries_cannot_be_imported(bare):
    code = ("import importlib.util, importlib.metadata as md, json; "
            f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {EXTRA_MODULES!r}}})); "
            "print(json.dumps(sorted(ep.name for ep in md.entry_points(group='plugtrain'))))")
    proc = bare("-c", code, module=False)
    assert proc.returncode == 0, proc.stderr
    found, entry_points = (json.loads(line) for line in proc.stdout.splitlines())
    assert found == dict.fromkeys(EXTRA_MODULES, False)
    assert "mlflow" not in entry_points and "wandb" not in entry_points and "segmentation" not in entry_points
    assert {"loggers", "backbones", "datasets"} <= set(entry_points)  # plugtrain's own plugins are all there


def test_list_and_plugins_show_only_the_built_in_loggers(bare):
    proc = bare("list", "loggers", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {r["name"] for r in json.loads(proc.stdout)} == {"console", "csv", "tensorboard"}
    assert proc.stderr == ""  # no warning about a missing plugin: nothing refers to the extras
    proc = bare("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    plugins = json.loads(proc.stdout)
    assert {p["distribution"] for p in plugins} == {"plugtrain"}
    assert all(p["error"] is None for p in plugins)


@pytest.mark.slow
def test_dry_run_with_the_default_loggers_and_a_spec_naming_an_extra(bare, tmp_path):
    spec = tiny_spec(tmp_path, "bare", tmp_path / "runs", epochs=1, steps=1)
    proc = bare("train", spec, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()
    # a spec that names an extra's logger is refused by the spec check, with one message and a hint
    named = tiny_spec(tmp_path, "named", tmp_path / "runs", extra='[[loggers]]\nname = "mlflow"\n')
    proc = bare("check", named)
    assert proc.returncode == 2
    assert "mlflow" in proc.stderr and "plugtrain list loggers" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_built_in_tasks_without_segmentation_and_a_segmentation_spec_refused(bare, tmp_path):
    """Without plugtrain-segmentation: ``list tasks`` shows the built-in tasks only, and a spec naming the extra's
    task is one message with a hint, exit 2."""
    proc = bare("list", "tasks", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert {"classification", "regression", "metric_learning"} <= names and "segmentation" not in names
    spec = tiny_spec(tmp_path, "seg", tmp_path / "runs")
    spec.write_text(spec.read_text(encoding="utf-8").replace("[data]", 'task = "segmentation"\n\n[data]', 1),
                    encoding="utf-8")
    proc = bare("check", spec)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "segmentation" in proc.stderr and "Traceback" not in proc.stderr
