"""``plugtrain sweep --check``: a search space that cannot produce a valid spec is an error with ``file:line:col`` in
the sweep file, before any trial (issue 16). Nothing is trained here; the checks resolve real specs against the real
registry (timm's backbones, albumentations' parameters)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import cli, tiny_spec
from helpers_sweep import write_sweep


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_a_good_space_passes_and_nothing_is_written(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "good.toml", spec, """\
[sweep]
trials = 4
sampler = "grid"

[params]
optimizer.lr = { uniform = [0.001, 0.004], step = 0.001 }
"backbone.name" = { choice = ["test_efficientnet", "test_resnet"] }
"data.batch_size" = { int = [8, 32], step = 8 }
"augmentations.train[0].p" = { uniform = [0.2, 0.8], step = 0.3 }
""")
    assert cli("sweep", sw, "--check") == 0
    out = capsys.readouterr().out
    assert "OK (4 parameter(s), 8 value(s) checked" in out, out
    assert not (tmp_path / "runs").exists()


def test_values_the_spec_rejects_are_reported_at_the_parameter(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "bad.toml", spec, """\
[sweep]
trials = 4
objective = "val/acuracy"

[params]
"backbone.name" = { choice = ["test_efficientnet", "resnet1234"] }
"augmentations.train[0].p" = { uniform = [0.5, 1.5] }
optimizer.lrr = { log_uniform = [1e-4, 1e-2] }
"data.batch_size" = { int = [0, 32], step = 16 }
""")
    assert cli("sweep", sw, "--check") == 2
    err = capsys.readouterr().err
    name_line = _line_of(sw, '"backbone.name"')
    p_line = _line_of(sw, "augmentations.train[0].p")
    lr_line = _line_of(sw, "optimizer.lrr")
    bs_line = _line_of(sw, "data.batch_size")
    obj_line = _line_of(sw, "objective")
    assert re.search(rf"bad\.toml:{name_line}:\d+: \[params\] backbone\.name = \"resnet1234\": .*unknown backbone "
                     r"'resnet1234'", err), err
    assert re.search(rf"bad\.toml:{p_line}:\d+: \[params\] augmentations\.train\[0\]\.p = 1\.5: .*must be in "
                     r"\[0, 1\], got 1\.5", err), err
    assert re.search(rf"bad\.toml:{lr_line}:\d+: .*unknown key 'lrr' in \[optimizer\].*Did you mean 'lr'", err), err
    assert re.search(rf"bad\.toml:{bs_line}:\d+: \[params\] data\.batch_size = 0: .*batch_size must be > 0", err), err
    assert re.search(rf"bad\.toml:{obj_line}:\d+: the objective 'val/acuracy' is not a metric.*'val/accuracy'", err), err
    # the good end of each range and the good choice are not reported
    assert "test_efficientnet\":" not in err and "= 32:" not in err and "= 0.5:" not in err


def test_a_malformed_space_is_reported_with_every_problem(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    sw = write_sweep(tmp_path / "shape.toml", spec, """\
[sweep]
trials = 0
sampler = "grid"
pruner = { name = "median", warmup = 1 }
objetive = "val/loss"

[params]
optimizer.lr = { loguniform = [1e-4, 1e-2] }
optimizer.weight_decay = { uniform = [0.1, 0.0] }
"loss.label_smoothing" = { log_uniform = [0.0, 0.2] }
"data.num_workers" = { uniform = [0, 2] }

[[enqueue]]
"data.num_workers" = 5
""")
    assert cli("sweep", sw, "--check") == 2
    err = capsys.readouterr().err
    expect = {
        "trials = 0": r"\[sweep\] trials must be an integer >= 1",
        "warmup = 1": r"unknown option 'warmup' of median\. Did you mean 'warmup_epochs'",
        "objetive": r"unknown key 'objetive' in \[sweep\]\. Did you mean 'objective'",
        "loguniform": r"unknown key 'loguniform'\. Did you mean 'log_uniform'",
        "weight_decay": r"uniform = \[0\.1, 0\.0\]: low must be below high",
        "label_smoothing": r"a log range needs low > 0",
        '"data.num_workers" = { uniform': r"the grid sampler needs a finite set of values",
        '"data.num_workers" = 5': r"outside its distribution",
    }
    for needle, pattern in expect.items():
        line = _line_of(sw, needle)
        assert re.search(rf"shape\.toml:{line}:\d+: .*{pattern}", err), (needle, err)


def test_a_sweep_file_that_is_a_run_spec_is_told_what_a_sweep_file_is(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    assert cli("sweep", spec, "--check") == 2
    err = capsys.readouterr().err
    assert "unknown key 'run' in a sweep file" in err and 'spec = "RUN_SPEC.toml"' in err, err


def test_the_shipped_example_sweep_checks(capsys):
    from conftest import REPO

    assert cli("sweep", REPO / "specs" / "sweeps" / "digits.toml", "--check") == 0
    assert "OK (4 parameter(s)" in capsys.readouterr().out
