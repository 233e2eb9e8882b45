"""Issue 12, class 6: a message points at the cause.

A problem that a ``--set`` brought about names the override (not a line of the file that merely holds the other half
of the combination); an unterminated multi-line string is reported where it opens; ``extends = "."`` says it names a
directory; a component unknown because its plugin failed to load says that plugin failed, with its load error.
"""

from __future__ import annotations

import pytest
from conftest import QUICKSTART, run_cli, subprocess_env, tiny_spec
from helpers_plugins import REPO, make_dist

from plugtrain.core.spec import resolve

QUICK = str(QUICKSTART.relative_to(REPO))


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def located(text: str, overrides: list[str]) -> list[str]:
    return resolve(text, overrides).problems


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("overrides, names", [
    # the file's loss and primary metric are right for classification: the override made them wrong
    (['run.task="regression"'], ["loss.name: loss 'CrossEntropy' fits classification runs",
                                 "run.primary_metric = 'val/accuracy' is not a metric of this run"]),
    # the file's batch size is fine on its own: m_per_class = 3 from the command line is what does not divide it
    (["data.m_per_class=3", 'data.sampler="m_per_class"'],
     ["data.batch_size (64) must be a multiple of data.m_per_class (3)"]),
    (['data.sampler="m_per_class"'], []),  # 64 is a multiple of the default 4: no problem at all
])
def test_a_combination_an_override_brought_about_names_the_override(overrides, names):
    problems = located(QUICK, overrides)
    assert len(problems) == len(names), problems
    for problem, name in zip(problems, names, strict=True):
        assert problem.startswith(f"{QUICK}: --set {overrides[0]}: {name}"), problem
    if names and overrides[0].startswith("run.task"):  # and it says where the other half is written
        assert problems[0].endswith(f"(loss.name at {QUICK}:24:1)"), problems[0]


@pytest.mark.usefixtures("in_repo")
def test_a_problem_of_the_file_alone_still_points_at_the_file():
    problems = located("tests/specs/bad/fit_views_ignored.toml", ["run.seed=3"])
    assert problems == [p for p in problems if p.startswith("tests/specs/bad/fit_views_ignored.toml:6:13: ")]


def test_an_unterminated_multi_line_string_is_reported_where_it_opens(tmp_path, cli_run):
    spec = tmp_path / "s.toml"
    spec.write_text('[run]\nname = "x"\nnotes = """one\ntwo\n\n[data]\nbatch_size = 3\n')
    proc = cli_run("check", spec)
    assert proc.returncode == 2
    assert f"{spec}:3:9: TOML syntax error: this multi-line string is never closed" in proc.stderr, proc.stderr
    spec.write_text("[run]\nname = '''x\n")
    assert f"{spec}:2:8: TOML syntax error: this multi-line string is never closed" in cli_run("check", spec).stderr


def test_extends_dot_says_it_is_a_directory(tmp_path, cli_run):
    spec = tmp_path / "s.toml"
    spec.write_text('extends = "."\n')
    proc = cli_run("check", spec)
    assert proc.returncode == 2 and "is a directory, not a spec file" in proc.stderr, proc.stderr
    assert "no such file" not in proc.stderr


BROKEN = """
import not_installed_anywhere  # noqa: F401

from plugtrain import Component, hookimpl


@hookimpl
def plugtrain_losses():
    return []
"""


@pytest.mark.slow
def test_a_component_of_a_plugin_that_failed_to_load_says_the_plugin_failed(tmp_path, cli_run):
    paths = make_dist(tmp_path / "plugin", "pt-broken", {"ptbroken": "pt_broken"}, {"pt_broken": BROKEN})
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    spec.write_text(spec.read_text().replace('name = "CrossEntropy"', 'name = "pt-focal"'))
    for name in ("pt-focal", "ptbroken:pt-focal"):
        spec.write_text(spec.read_text().replace('name = "pt-focal"', f'name = "{name}"'))
        proc = run_cli("check", spec, env=subprocess_env(PYTHONPATH=str(paths)))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert (f"loss.name: unknown loss {name.split(':')[-1]!r}" in proc.stderr
                and "plugin 'ptbroken' (pt-broken==1.0) failed to load: ModuleNotFoundError: No module named "
                    "'not_installed_anywhere'" in proc.stderr), proc.stderr
        spec.write_text(spec.read_text().replace(f'name = "{name}"', 'name = "pt-focal"'))
    # without the broken plugin the message is the plain one
    proc = cli_run("check", spec)
    assert "unknown loss 'pt-focal'" in proc.stderr and "failed to load" not in proc.stderr
