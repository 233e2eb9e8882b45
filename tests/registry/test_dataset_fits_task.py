"""``plugtrain check`` refuses a dataset whose declared targets (``Fits.tasks``: ``DatasetSplits.task`` words) are
none that ``run.task`` trains on, generically: a plugin task and a plugin dataset, no built-in name is special."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import tiny_spec
from helpers_plugins import make_dist

from plugtrain.core.registry import reset_registry

#: A task trained on "points" targets only, and a dataset that yields them (both from plugins).
POINTS = '''
from plugtrain import Component, hookimpl
from plugtrain.plugins.tasks import Regression


class PointsTask(Regression):
    dataset_tasks = ("points",)


def points_dataset(root: str = "pts"):
    raise NotImplementedError  # check never builds a dataset


@hookimpl
def plugtrain_tasks():
    return [Component("points", PointsTask)]


@hookimpl
def plugtrain_datasets():
    return [Component("point-clouds", points_dataset, fits={"tasks": ("points",)})]
'''


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """The plugin installed in this process's registry (and gone again afterwards), and a spec of its task."""
    root = tmp_path_factory.mktemp("points")
    dist = make_dist(root / "dist", "points-task", {"points": "points_task"}, {"points_task": POINTS})
    spec = tiny_spec(root, name="pts", epochs=1)  # dataset sklearn-digits: class indices or values, no points
    text = spec.read_text().replace('name = "pts"\n', 'name = "pts"\ntask = "points"\n', 1)
    spec.write_text(text.replace('[loss]\nname = "CrossEntropy"\n', '[loss]\nname = "MSE"\n'))
    saved = list(sys.path)
    sys.path.insert(0, str(dist))
    importlib.invalidate_caches()
    reset_registry()
    try:
        yield root, spec
    finally:
        sys.path[:] = saved
        sys.modules.pop("points_task", None)
        importlib.invalidate_caches()
        reset_registry()


def test_check_refuses_a_dataset_without_the_targets_of_the_task_naming_those_that_fit(points, cli_run):
    root, spec = points
    out = cli_run("check", spec)
    line = spec.read_text().splitlines().index('dataset = "sklearn-digits"') + 1
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (f"{spec.name}:{line}:11: data.dataset: dataset 'sklearn-digits' yields classification or regression "
            "targets, but run.task = 'points' needs points targets. Datasets that fit: point-clouds.") in out.stderr
    assert not (root / "runs").exists()
    good = root / "good.toml"  # the dataset that declares the targets passes (its parameters are its own concern)
    good.write_text(spec.read_text().replace('dataset = "sklearn-digits"', 'dataset = "point-clouds"'))
    out = cli_run("check", good)
    assert "data.dataset: dataset" not in out.stderr, out.stderr
