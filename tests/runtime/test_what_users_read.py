"""Small things a user reads (issue 13, item 8): one error prefix per line in a queue, the banner of a regression
run, the dry-run table's trainer row, list / show without docstring markup."""

from __future__ import annotations

import pytest
from conftest import cli, tiny_spec


def test_a_failed_spec_in_a_queue_has_one_error_prefix(tmp_path, capsys):
    good = tiny_spec(tmp_path, "good", tmp_path / "runs", epochs=1, steps=1)
    bad = tiny_spec(tmp_path, "bad", tmp_path / "runs", epochs=1, steps=1, backbone="resnet_nope")
    assert cli("train", good, bad) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "bad.toml" in x)
    assert line.startswith(f"plugtrain: error: {bad}: ") and line.count("plugtrain: error") == 1


def test_a_regression_banner_speaks_of_target_values_and_dry_run_shows_the_trainer(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "reg", tmp_path / "runs", epochs=1, steps=1)
    text = spec.read_text().replace('[loss]\nname = "CrossEntropy"', '[loss]\nname = "MSE"')
    text = text.replace('[run]\n', '[run]\ntask = "regression"\n').replace('dataset = "sklearn-digits"\n',
                                                                          'dataset = "sklearn-digits"\ntarget = "value"\n')
    spec.write_text(text)
    assert cli("train", spec, "--dry-run") == 0
    out = capsys.readouterr().out
    trainer = next(x for x in out.splitlines() if x.startswith("trainer"))
    assert "compile False" in trainer and "channels_last False" in trainer and "precision fp32" in trainer
    assert "target value(s)" in out and "1 classes" not in out


def test_list_and_show_print_no_docstring_markup(capsys):
    assert cli("list", "losses") == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    assert cli("show", "losses", "ArcFace") == 0
    assert "``" not in capsys.readouterr().out


@pytest.mark.slow
def test_compile_on_cpu_trains_without_a_cuda_warning(tmp_path):
    from conftest import run_cli

    spec = tiny_spec(tmp_path, "c", tmp_path / "runs", epochs=1, steps=2, extra="compile = true")
    proc = run_cli("train", spec, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CUDA" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-2000:]
