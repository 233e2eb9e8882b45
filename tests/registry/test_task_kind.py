"""Tasks are components too (issue 23): the built-in ones are listed, ``run.task`` is checked like any component
name, and a task written from CONTRIBUTING.md alone, installed as a plugin, checks, trains and predicts."""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_spec
from helpers_plugins import REPO, assert_clean_error, make_dist, run_plugtrain

#: The task of CONTRIBUTING.md's "Writing a task", exactly as written there.
EXAMPLE = re.search(r"<!-- example task: [^\n]*-->\n```python\n(.*?)```", (REPO / "CONTRIBUTING.md").read_text(),
                    re.S).group(1)
#: A task that forgets half of its contract.
BROKEN = '''
from plugtrain import Component, hookimpl


class Half:
    outputs = "logits"


@hookimpl
def plugtrain_tasks():
    return [Component("half", Half)]
'''


def test_list_tasks_shows_the_built_in_tasks(cli_run):
    out = cli_run("list", "tasks", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert {"classification", "regression", "metric_learning"} <= set(rows)
    assert {rows[n]["kind"] for n in rows} == {"tasks"}


def test_a_misspelt_task_is_one_message_with_a_did_you_mean(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, extra="")
    text = spec.read_text().replace('name = "tiny"\n', 'name = "tiny"\ntask = "clasification"\n', 1)
    spec.write_text(text)
    out = cli_run("check", spec)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = text.splitlines().index('task = "clasification"') + 1
    assert f"{spec.name}:{line}:8: run.task: unknown task 'clasification'. Did you mean 'classification'?" in out.stderr
    assert "plugtrain list tasks" in out.stderr


def test_task_parameters_are_checked_against_the_task(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, extra="\n[task]\nthreshold = 0.5\n")
    out = cli_run("check", spec)
    assert out.returncode == 2 and "unknown key 'threshold' in [task] (task 'classification')" in out.stderr


@pytest.fixture(scope="module")
def ordinal(tmp_path_factory):
    """The CONTRIBUTING example installed as a plugin (with a broken task beside it), and a spec of its task."""
    root = tmp_path_factory.mktemp("ordinal")
    paths = [make_dist(root / "dist", "ordinal-task", {"ordinal": "ordinal_task", "half": "half_task"},
                       {"ordinal_task": EXAMPLE, "half_task": BROKEN})]
    spec = tiny_spec(root, name="ordinal", epochs=1, steps=2)
    text = spec.read_text().replace('name = "ordinal"\n', 'name = "ordinal"\ntask = "ordinal"\n', 1)
    text = text.replace('[loss]\nname = "CrossEntropy"\n', "[task]\ntolerance = 0.25\n")  # the task's default loss
    spec.write_text(text)
    return root, spec, paths


@pytest.mark.slow
def test_a_task_written_from_contributing_trains_and_predicts(ordinal):
    root, spec, paths = ordinal
    trained = run_plugtrain("train", str(spec), paths=paths, timeout=300)
    assert trained.returncode == 0, trained.stderr
    run_dir = root / "runs" / "ordinal"
    assert "1 value in [0, 9]" in trained.stdout + trained.stderr  # the banner, as the task words it
    assert "OrdinalMSE" in (run_dir / "spec.toml").read_text()  # no [loss]: the task's default loss
    image = root / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8), 200).save(image)
    predicted = run_plugtrain("predict", str(run_dir), str(image), "--json", paths=paths)
    assert predicted.returncode == 0, predicted.stderr
    (result,) = json.loads(predicted.stdout)
    assert set(result) >= {"image", "value", "class", "index", "sure"} and 0 <= result["index"] <= 9
    assert result["sure"] == (abs(result["value"] - result["index"]) <= 0.25)  # [task] tolerance reached the task
    namespace: dict = {}
    exec(compile(EXAMPLE, "CONTRIBUTING.md", "exec"), namespace)  # what `plugtrain predict` prints after the tab
    assert namespace["ordinal"]().predict_text(result) == f"{result['class']} ({result['value']:.2f}" + (
        ")" if result["sure"] else ", unsure)")


def test_built_in_losses_do_not_fit_the_plugin_task(ordinal, tmp_path):
    _, spec, paths = ordinal
    bad = tmp_path / "ce.toml"
    bad.write_text(spec.read_text().replace("[task]\n", '[loss]\nname = "CrossEntropy"\n\n[task]\n', 1))
    out = run_plugtrain("check", str(bad), paths=paths)
    assert_clean_error(out, "loss 'CrossEntropy' fits classification runs", "run.task = 'ordinal'",
                       "Losses that fit: OrdinalMSE")


def test_a_task_that_breaks_its_contract_is_refused_by_check(ordinal, tmp_path):
    _, spec, paths = ordinal
    bad = tmp_path / "half.toml"
    bad.write_text(spec.read_text().replace('task = "ordinal"', 'task = "half"').replace("[task]\ntolerance = 0.25\n",
                                                                                          '[loss]\nname = "MSE"\n'))
    out = run_plugtrain("check", str(bad), paths=paths)
    assert_clean_error(out, "run.task: [task] task 'half' (half) returned a Half that has no attribute",
                       "plugtrain.core.hookspecs.Task")
