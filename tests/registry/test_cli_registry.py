"""``plugtrain list / show / plugins`` in real child processes, with plugins found through real entry points.

Each test plugin is a ``*.dist-info`` (METADATA + entry_points.txt with a ``[plugtrain]`` section) on a temporary
folder put on PYTHONPATH, next to its module: exactly what ``pip install`` leaves behind. The example plugin's
dist-info points at the source under ``examples/plugtrain-example-plugin/src``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_plugins import REPO, assert_clean_error, build_plugin_dists, json_out, plugin_env, run_plugtrain

KINDS = ("backbones", "losses", "optimizers", "schedulers", "augmentations", "loggers", "datasets", "metrics",
         "callbacks", "tasks")
LIST_KEYS = {"kind", "name", "plugin", "distribution", "version", "summary"}
SHOW_KEYS = {"kind", "name", "summary", "doc", "params"}
PARAM_KEYS = {"name", "default", "annotation", "required"}
PLUGIN_KEYS = {"name", "distribution", "version", "hooks", "error"}
BUILTINS = {"backbones", "losses", "optimizers", "schedulers", "augmentations", "loggers", "datasets", "metrics",
            "callbacks"}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, list[Path]]:
    return build_plugin_dists(tmp_path_factory.mktemp("plugins"))


@pytest.fixture(scope="module")
def cli(dists):
    """``cli(*args, plugins=[...], **env)``: run plugtrain with those test plugins installed; results are cached."""
    cache: dict[tuple, subprocess.CompletedProcess] = {}

    def run(*args: str, plugins: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
        key = (args, tuple(plugins), tuple(sorted(env.items())))
        if key not in cache:
            paths = [p for name in plugins for p in dists[name]]
            cache[key] = run_plugtrain(*args, paths=paths, **env)
        return cache[key]

    return run


def rows(stdout: str) -> list[list[str]]:
    """The data rows of a plain (non-TTY) table: tab-separated, after the header line."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [line.split("\t") for line in lines[1:]]


# -- the commands exist ------------------------------------------------------------------------------------------------


def test_python_m_plugtrain_help_lists_commands():
    proc = run_plugtrain("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("list", "show", "plugins", "check", "train", "evaluate", "predict", "schema"):
        assert command in proc.stdout


def test_console_script_help_and_version():
    script = Path(sys.executable).parent / "plugtrain"
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: plugtrain" in proc.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("plugtrain ")


def test_bad_command_line_is_a_usage_error():
    proc = run_plugtrain("lisst")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "invalid choice" in proc.stderr


# -- list ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_list_json_has_all_ten_kinds_with_exact_keys(cli):
    data = json_out(cli("list", "--json", plugins=("example",)))
    assert isinstance(data, list) and data
    for item in data:
        assert set(item) == LIST_KEYS, item
    assert {item["kind"] for item in data} == set(KINDS)
    # grouped by kind, in the documented kind order
    order = [item["kind"] for item in data]
    assert order == sorted(order, key=KINDS.index)
    by = {(i["kind"], i["name"]): i for i in data}
    assert by[("backbones", "resnet18")]["distribution"] == "plugtrain"
    assert by[("backbones", "resnet18")]["plugin"] == "backbones"
    assert ("augmentations", "HorizontalFlip") in by
    assert ("losses", "CrossEntropy") in by and ("optimizers", "AdamW") in by
    # the example plugin, installed as a dist-info on a temporary path, is listed with its distribution and version
    for kind, name in (("backbones", "example-tinycnn"), ("losses", "example-focal"), ("loggers", "example-jsonl")):
        item = by[(kind, name)]
        assert (item["plugin"], item["distribution"], item["version"]) == (
            "example", "plugtrain-example-plugin", "0.1.0")
        assert item["summary"]


@pytest.mark.slow
def test_list_backbones_glob_is_case_insensitive(cli):
    proc = cli("list", "backbones", "RESNET1*")
    assert proc.returncode == 0, proc.stderr
    names = [r[1] for r in rows(proc.stdout)]
    assert "resnet18" in names and "resnet101" in names
    assert "resnet50" not in names and "resnet34" not in names
    assert all(n.lower().startswith("resnet1") for n in names)
    assert {r[0] for r in rows(proc.stdout)} == {"backbones"}


def test_list_one_kind_plain_table(cli):
    proc = cli("list", "losses", plugins=("example",))
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines()[0].split("\t") == ["kind", "name", "plugin", "distribution", "summary"]
    table = {r[1]: r for r in rows(proc.stdout)}
    assert table["example-focal"] == ["losses", "example-focal", "example", "plugtrain-example-plugin==0.1.0",
                                      "focal loss with focusing parameter gamma (example plugin)"]
    assert table["CrossEntropy"][2:4] == ["losses", "plugtrain==0.1.0"]


@pytest.mark.slow
def test_list_glob_without_kind_searches_every_kind_and_no_match_is_an_error(cli):
    proc = cli("list", "EXAMPLE-*", plugins=("example",))
    assert proc.returncode == 0, proc.stderr
    assert sorted(r[1] for r in rows(proc.stdout)) == ["example-focal", "example-jsonl", "example-tinycnn"]
    assert_clean_error(cli("list", "losses", "nothing-like-this*"), "no losses match 'nothing-like-this*'")


# -- show -----------------------------------------------------------------------------------------------------------


def test_show_text_prints_summary_doc_and_parameters(cli):
    proc = cli("show", "losses", "example-focal", plugins=("example",))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0] == "losses example-focal  (plugin example, plugtrain-example-plugin==0.1.0)"
    assert "focal loss with focusing parameter gamma (example plugin)" in out
    assert "Focal loss: cross-entropy scaled by" in out  # the docstring
    params = {line.split("\t")[0]: line.split("\t") for line in out.splitlines() if "\t" in line}
    assert params["name"] == ["name", "annotation", "default"]
    assert params["gamma"] == ["gamma", "float >= 0", "2.0"]
    assert params["alpha"] == ["alpha", "float | None", "None"]
    assert params["reduction"] == ["reduction", "Literal['mean', 'sum', 'none']", "'mean'"]


@pytest.mark.slow
def test_show_json_keys_and_context_args_left_out(cli):
    data = json_out(cli("show", "backbones", "example-tinycnn", "--json", plugins=("example",)))
    assert set(data) == SHOW_KEYS
    assert (data["kind"], data["name"]) == ("backbones", "example-tinycnn")
    assert data["summary"] == "a tiny three-stage CNN (example plugin)"
    assert "tiny three-stage CNN" in data["doc"]
    for p in data["params"]:
        assert set(p) == PARAM_KEYS
    assert data["params"] == [
        {"name": "in_chans", "default": 3, "annotation": "int", "required": False},
        {"name": "width", "default": 16, "annotation": "int", "required": False},
    ]  # num_classes is a context argument of backbones: the runtime supplies it, a spec never does

    logger = json_out(cli("show", "loggers", "example-jsonl", "--json", plugins=("example",)))
    assert [p["name"] for p in logger["params"]] == ["filename"]  # run_dir is context


def test_show_required_parameters_and_odd_defaults(cli):
    data = json_out(cli("show", "loss", "ctx-loss", "--json", plugins=("context",)))  # singular kind accepted
    assert data["params"] == [
        {"name": "margin", "default": 0.5, "annotation": "float", "required": False},
        {"name": "mode", "default": "a", "annotation": "Literal['a', 'b']", "required": False},
        {"name": "scale", "default": None, "annotation": "float", "required": True},
    ]
    text = cli("show", "losses", "ctx-loss", plugins=("context",)).stdout
    assert "scale\tfloat\trequired" in text
    assert "Second paragraph of the docstring." in text
    odd = json_out(cli("show", "losses", "odd-default", "--json", plugins=("context",)))
    assert odd["params"][0]["default"] == "ObjDefault()"
    assert odd["params"][1]["default"] == [3, 4]


# -- plugins --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plugins_json_reports_every_plugin_and_every_failure(cli):
    proc = cli("plugins", "--json", plugins=("example", "broken", "hookfail", "typo", "clash"))
    data = json_out(proc)
    for item in data:
        assert set(item) == PLUGIN_KEYS, item
    by = {p["name"]: p for p in data}
    assert BUILTINS <= set(by)
    for name in BUILTINS:
        assert by[name]["distribution"] == "plugtrain" and by[name]["error"] is None
        assert by[name]["hooks"] == [f"plugtrain_{name}"]
    assert by["example"]["hooks"] == ["plugtrain_backbones", "plugtrain_loggers", "plugtrain_losses"]
    assert (by["example"]["distribution"], by["example"]["version"], by["example"]["error"]) == (
        "plugtrain-example-plugin", "0.1.0", None)
    # import failure: the error's last line
    assert by["broken"]["version"] == "2.3" and by["broken"]["hooks"] == []
    assert "the optional dependency 'unobtainium' is not installed" in by["broken"]["error"]
    # a hook that raises: plugins calls every hook, so the error is known without using the kind first
    assert by["hookfail"]["hooks"] == ["plugtrain_losses", "plugtrain_metrics"]
    assert "plugtrain_losses" in by["hookfail"]["error"] and "corrupt" in by["hookfail"]["error"]
    assert "plugtrain_lossess" in by["typo"]["error"]
    assert by["clasha"]["error"] is None and by["clashb"]["error"] is None
    assert by["clashb"]["distribution"] == "clash-b-dist"
    # the same failures are warned about on stderr, and the command still succeeds
    assert "plugin 'broken' (broken-dist==2.3) failed to load" in proc.stderr
    assert "plugin 'hookfail' (hookfail-dist==1.1) failed in plugtrain_losses" in proc.stderr


@pytest.mark.slow
def test_plugins_text_table(cli):
    proc = cli("plugins", plugins=("example", "broken"))
    assert proc.returncode == 0, proc.stderr
    table = {r[0]: r for r in rows(proc.stdout)}
    assert table["example"][:3] == ["example", "plugtrain-example-plugin==0.1.0", "backbones, loggers, losses"]
    assert "unobtainium" in table["broken"][3]


# -- broken plugins never take the registry down --------------------------------------------------------------------


def test_plugin_raising_on_import_is_a_warning(cli):
    proc = cli("list", "losses", plugins=("broken", "example"))
    assert proc.returncode == 0
    names = [r[1] for r in rows(proc.stdout)]
    assert "CrossEntropy" in names and "example-focal" in names
    warnings = [line for line in proc.stderr.splitlines() if line]
    assert warnings == [
        "plugtrain: warning: plugin 'broken' (broken-dist==2.3) failed to load: "
        "RuntimeError: the optional dependency 'unobtainium' is not installed"
    ]
    assert json.loads(cli("list", "losses", "--json", plugins=("broken",)).stdout)  # stdout stays parseable


def test_plugin_whose_hook_raises_is_a_warning_and_its_other_hooks_work(cli):
    proc = cli("list", "losses", plugins=("hookfail", "example"))
    assert proc.returncode == 0
    assert "example-focal" in [r[1] for r in rows(proc.stdout)]
    assert proc.stderr.strip() == (
        "plugtrain: warning: plugin 'hookfail' (hookfail-dist==1.1) failed in plugtrain_losses: "
        "ValueError: the losses table of pt_hook_raises is corrupt"
    )
    metrics = cli("list", "metrics", plugins=("hookfail",))
    assert metrics.returncode == 0 and metrics.stderr == ""
    assert ["metrics", "half-metric", "hookfail", "hookfail-dist==1.1"] in [r[:4] for r in rows(metrics.stdout)]
    assert "accuracy" in [r[1] for r in rows(metrics.stdout)]


@pytest.mark.parametrize(
    ("plugin", "args", "needles"),
    [
        ("broken", ("list", "losses"), ("plugin 'broken' (broken-dist==2.3) failed to load", "unobtainium")),
        ("hookfail", ("list", "losses"), ("plugin 'hookfail' (hookfail-dist==1.1) failed in plugtrain_losses",)),
        ("typo", ("list", "metrics"), ("plugin 'typo'", "Did you mean 'plugtrain_losses'?")),
    ],
)
def test_strict_mode_makes_plugin_failures_fatal(cli, plugin, args, needles):
    proc = cli(*args, plugins=(plugin,), PLUGTRAIN_STRICT_PLUGINS="1")
    err = assert_clean_error(proc, *needles, "PLUGTRAIN_STRICT_PLUGINS")
    assert err.startswith("plugtrain: error: ") and len(err.strip().splitlines()) == 1
    assert proc.stdout == ""
    # without strict mode the same command succeeds
    assert cli(*args, plugins=(plugin,)).returncode == 0


def test_misspelled_hook_is_named_with_its_plugin_and_a_did_you_mean(cli):
    proc = cli("list", "losses", plugins=("typo",))
    assert proc.returncode == 0
    assert proc.stderr.strip() == (
        "plugtrain: warning: plugin 'typo' (typo-dist==0.3) is invalid: unknown hook 'plugtrain_lossess'. "
        "Did you mean 'plugtrain_losses'?"
    )
    assert "never-listed" not in proc.stdout


def test_hooks_returning_bad_components_are_reported(cli):
    proc = cli("list", "callbacks", plugins=("badcomp",))
    assert proc.returncode == 0
    assert "plugin 'badcomp' (badcomp-dist==1.0) failed in plugtrain_callbacks: TypeError: plugtrain_callbacks " \
           "returned a str, not a plugtrain.Component" in proc.stderr
    assert "early-stopping" in proc.stdout
    metrics = cli("list", "metrics", plugins=("badcomp",))
    assert metrics.returncode == 0 and "returned a Component with the name ''" in metrics.stderr
    datasets = cli("list", "datasets", plugins=("badcomp",))
    assert datasets.returncode == 0 and "returns the dataset 'dup' twice" in datasets.stderr
    assert [r[1] for r in rows(datasets.stdout)].count("dup") == 1


# -- name clashes --------------------------------------------------------------------------------------------------


def test_name_clash_lists_both_and_using_it_names_both_providers(cli):
    proc = cli("list", "losses", "shared", plugins=("clash",))
    assert proc.returncode == 0 and proc.stderr == ""
    assert [r[:4] for r in rows(proc.stdout)] == [
        ["losses", "Shared", "clasha", "clash-a-dist==1.0"],
        ["losses", "Shared", "clashb", "clash-b-dist==2.0"],
    ]
    err = assert_clean_error(cli("show", "losses", "Shared", plugins=("clash",)))
    assert err.strip() == (
        "plugtrain: error: the loss name 'Shared' is registered by more than one plugin: "
        "plugin 'clasha' (clash-a-dist==1.0) and plugin 'clashb' (clash-b-dist==2.0). "
        "Write 'clasha:Shared' or 'clashb:Shared' to choose one."
    )


def test_plugin_prefix_selects_one_provider(cli):
    a = json_out(cli("show", "losses", "clasha:Shared", "--json", plugins=("clash",)))
    b = json_out(cli("show", "losses", "clashb:Shared", "--json", plugins=("clash",)))
    assert [p["name"] for p in a["params"]] == ["alpha"] and a["doc"] == "Shared loss from plugin A."
    assert [p["name"] for p in b["params"]] == ["beta"] and b["doc"] == "Shared loss from plugin B."
    # a prefix also works where there is no clash
    assert json_out(cli("show", "losses", "example:example-focal", "--json", plugins=("example",)))["name"] == (
        "example-focal")
    assert_clean_error(cli("show", "losses", "clashc:Shared", plugins=("clash",)),
                       "unknown plugin 'clashc'", "Did you mean")
    assert_clean_error(cli("show", "losses", "losses:Shared", plugins=("clash",)),
                       "plugin 'losses' provides no loss 'Shared'", "'clasha:Shared' or 'clashb:Shared'")


# -- disabling --------------------------------------------------------------------------------------------------------


def test_disable_plugins_skips_entry_points_by_name(cli):
    proc = cli("list", "losses", plugins=("example", "clash"), PLUGTRAIN_DISABLE_PLUGINS="example, clasha")
    assert proc.returncode == 0 and proc.stderr == ""
    table = [r[:3] for r in rows(proc.stdout)]
    assert ["losses", "Shared", "clashb"] in table
    assert all(r[2] not in ("example", "clasha") for r in table)
    # with one provider left, the name is no longer ambiguous
    assert json_out(cli("show", "losses", "Shared", "--json", plugins=("clash",),
                        PLUGTRAIN_DISABLE_PLUGINS="clasha"))["doc"] == "Shared loss from plugin B."
    # a disabled broken plugin is not even imported: no warning
    quiet = cli("list", "losses", plugins=("broken",), PLUGTRAIN_DISABLE_PLUGINS="broken")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_disabled_example_plugin_vanishes_from_list_show_and_plugins(cli):
    env = {"PLUGTRAIN_DISABLE_PLUGINS": "example"}
    listed = cli("list", "losses", "--json", plugins=("example",), **env)
    assert "example-focal" not in {c["name"] for c in json_out(listed)}
    assert_clean_error(cli("show", "losses", "example-focal", plugins=("example",), **env),
                       "unknown loss 'example-focal'")
    plugins = cli("plugins", plugins=("example",), **env)
    assert plugins.returncode == 0
    row = {r[0]: r for r in rows(plugins.stdout)}["example"]
    assert row[2] == "" and "disabled" in row[3]


def test_disabling_an_unknown_plugin_warns_with_did_you_mean(cli):
    proc = cli("list", "losses", plugins=("example",), PLUGTRAIN_DISABLE_PLUGINS="exampel")
    assert proc.returncode == 0
    assert "example-focal" in proc.stdout  # nothing was disabled
    assert "PLUGTRAIN_DISABLE_PLUGINS names 'exampel', which is no plugin. Did you mean 'example'?" in proc.stderr


# -- did-you-mean -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("list", "lossez"), ("unknown component kind 'lossez'. Did you mean 'losses'?",)),
        (("show", "optimisers", "AdamW"), ("unknown component kind 'optimisers'. Did you mean 'optimizers'?",)),
        # no run.task here: every close name is offered, the closest first (extras may add more, e.g. SegCrossEntropy)
        (("show", "losses", "CrossEntropi"), ("unknown loss 'CrossEntropi'. Did you mean 'CrossEntropy'",
                                              "plugtrain list losses")),
        (("show", "losses", "crossentropy"), ("Did you mean 'CrossEntropy'",)),
        (("show", "losses", "example-focl"), ("Did you mean 'example-focal'?",)),
    ],
)
def test_unknown_kind_or_name_gives_did_you_mean(cli, args, needles):
    err = assert_clean_error(cli(*args, plugins=("example",)), *needles)
    assert len(err.strip().splitlines()) == 1


def test_output_into_a_closed_pipe_ends_quietly(dists):
    # `true` exits at once, so plugtrain writes into a closed pipe (what `plugtrain list | head` does).
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m plugtrain list optimizers | true"],
        capture_output=True, text=True, timeout=120, env=plugin_env(dists["example"]), cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.slow
def test_pip_installed_example_plugin_appears_with_no_other_step(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, used without network (no build isolation)
    source = tmp_path / "src-copy"
    shutil.copytree(REPO / "examples" / "plugtrain-example-plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert list(target.glob("plugtrain_example_plugin-0.1.0.dist-info"))
    listed = run_plugtrain("list", "losses", "--json", paths=[target])
    assert {"kind": "losses", "name": "example-focal", "plugin": "example", "distribution": "plugtrain-example-plugin",
            "version": "0.1.0", "summary": "focal loss with focusing parameter gamma (example plugin)"} in json_out(listed)
    assert listed.stderr == ""
    gone = run_plugtrain("list", "losses", "--json", paths=[target], PLUGTRAIN_DISABLE_PLUGINS="example")
    assert "example-focal" not in {c["name"] for c in json_out(gone)}
