"""The spec through the real command line (``python -m plugtrain`` in a child process): exit codes, one readable
message on stderr without a traceback, ``--set`` on ``check`` and ``train``, ``check --print``.

Each child costs seconds (importing torch and timm), so each test here runs one command that checks several things;
the finer details are tested in-process in the other ``test_spec_*`` files.
"""

from __future__ import annotations

import shutil
import sys

from helpers_plugins import REPO, assert_clean_error, run_plugtrain

from plugtrain.core.spec import load_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GOOD = REPO / "tests" / "specs" / "good"
ONEOF = "augmentations.train[0].transforms[0].transforms[0]"


def test_check_set_errors_name_each_override_and_missing_files_are_reported(tmp_path):
    spec = shutil.copy(GOOD / "full.toml", tmp_path / "full.toml")
    proc = run_plugtrain(
        "check", spec, tmp_path / "missing.toml",
        "--set", "optimizer.lr=-1",
        "--set", 'backbone.name="resnet19"',
        "--set", f"{ONEOF}.transforms[1].p=3",
        "--set", "run.name=oops",
        "--set", "augmentations.train[7].p=0.5",
    )
    err = assert_clean_error(proc)
    assert proc.stdout == ""
    assert err.splitlines() == [
        "plugtrain: error: 6 problems in the spec:",
        f"{spec}: --set run.name=oops: the value 'oops' is not TOML: a string needs double quotes, and the shell "
        "needs single quotes around them: --set 'run.name=\"oops\"'",
        f"{spec}: --set augmentations.train[7].p=0.5: augmentations.train has 1 item: index [7] is out of range",
        f"{spec}: --set optimizer.lr=-1: optimizer.lr must be > 0, got -1",
        f"{spec}: --set backbone.name=\"resnet19\": backbone.name: unknown backbone 'resnet19'. Did you mean "
        "'resnet18', 'resnet61q' or 'resnet51q'? Run `plugtrain list backbones` to see them all.",
        f"{spec}: --set {ONEOF}.transforms[1].p=3: {ONEOF}.transforms[1].p must be in [0, 1], got 3",
        f"{tmp_path / 'missing.toml'}: no such file",
    ]


def test_train_with_a_bad_set_exits_2_before_creating_a_run_directory(tmp_path):
    runs = tmp_path / "runs"
    spec = tmp_path / "spec.toml"
    spec.write_text((GOOD / "base.toml").read_text().replace('output_dir = "runs"', f'output_dir = "{runs}"'))
    proc = run_plugtrain("train", spec, "--set", "optimizer.lr=-1", "--set", f"{ONEOF}.p=0.5")
    err = assert_clean_error(proc)
    assert err.splitlines() == [
        "plugtrain: error: 2 problems in the spec:",
        f"{spec}: --set {ONEOF}.p=0.5: augmentations.train[0].transforms does not exist, so [0] cannot index it",
        f"{spec}: --set optimizer.lr=-1: optimizer.lr must be > 0, got -1",
    ]
    assert not runs.exists(), list(runs.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_check_print_resolves_extends_and_set_into_a_spec_that_loads_the_same(tmp_path):
    grandchild = GOOD / "deeper" / "grandchild.toml"
    overrides = ["optimizer.lr=0.5", "augmentations.train[0].transforms[1].p=0.25", "trainer.precision='fp32'"]
    args = [a for o in overrides for a in ("--set", o)]
    proc = run_plugtrain("check", "--print", grandchild, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    printed = tmp_path / "printed.toml"
    printed.write_text(proc.stdout)
    assert proc.stdout.startswith("# Resolved by `plugtrain check --print`")
    assert "extends" not in tomllib.loads(proc.stdout)  # composed: the printed spec stands alone
    assert load_spec(printed) == load_spec(grandchild, overrides)


def test_plugtrain_debug_adds_the_traceback_behind_the_message(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('[run]\nname = "x"\nepochs = 0\n', encoding="utf-8")
    quiet = run_plugtrain("train", str(spec))
    debug = run_plugtrain("train", str(spec), PLUGTRAIN_DEBUG="1")
    assert quiet.returncode == debug.returncode == 2
    assert "Traceback" not in quiet.stderr and f"{spec}:3:" in quiet.stderr
    assert "Traceback (most recent call last)" in debug.stderr and "plugtrain/core/" in debug.stderr
    assert debug.stderr.rstrip().endswith(quiet.stderr.rstrip().splitlines()[-1])  # the same message, last
    assert not (tmp_path / "runs").exists()
