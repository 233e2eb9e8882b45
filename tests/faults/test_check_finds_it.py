"""Issue 12, class 3: what ``train`` would refuse before its first step, ``check`` refuses first, with a location.

The corpus (``tests/specs/bad/``, ``tests/spec/test_spec_corpus.py``) pins each problem's place and words. Here: ``check``
and ``train`` agree on those specs (the same problems, exit 2, nothing written); what a component declares it fits
(``Component(..., fits=...)``) is checked while an undeclared plugin component stays permitted; a warmup longer than
a run cut short by ``trainer.max_steps_per_epoch`` is a located warning, not an error.
"""

from __future__ import annotations

import pytest
from conftest import cli, run_cli, subprocess_env, tiny_spec
from helpers_plugins import REPO, make_dist

BAD = REPO / "tests" / "specs" / "bad"
#: Combinations that only a run found before (a RuntimeError at the first step or the first validation, an epoch
#: into training, or a refusal after the data was read), now found by check.
FOUND_BY_CHECK = ["fit_loss_regression", "fit_loss_metric_learning", "fit_loss_on_embeddings", "fit_metric_task",
                  "fit_views_ignored", "warmup_longer_than_run", "primary_metric_unknown",
                  "mixup_not_classification", "mixup_odd_batch", "nested_base_params", "nested_base_unknown",
                  "nested_wraps_itself", "number_beyond_64_bits", "number_not_finite", "seed_out_of_range",
                  "enum_backend_device", "run_path_escape", "std_not_positive", "output_dir_is_a_file",
                  "two_pass_optimizer", "nested_two_pass_base", "loss_optimizer_without_parameters",
                  "pretrained_missing_file"]


@pytest.mark.parametrize("name", FOUND_BY_CHECK)
def test_check_and_train_refuse_the_same_spec_with_the_same_located_problems(name, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = (BAD / f"{name}.toml").relative_to(REPO)
    capfd.readouterr()
    assert cli("check", spec) == 2
    checked = capfd.readouterr().err
    before = sorted(REPO.glob("runs/*"))
    assert cli("train", spec, "--set", f'run.output_dir="{tmp_path.as_posix()}"' if name != "output_dir_is_a_file"
               else "run.seed=0") == 2
    trained = capfd.readouterr().err
    located = [line for line in checked.splitlines() if line.startswith(f"{spec}:")]
    assert located and all(line in trained for line in located), (checked, trained)
    assert list(tmp_path.iterdir()) == [] and sorted(REPO.glob("runs/*")) == before


UNDECLARED_LOSS = """
from plugtrain import Component, hookimpl


def scaled_mse(scale: float = 1.0):
    import torch

    class ScaledMSE(torch.nn.Module):
        def forward(self, outputs, targets):
            return scale * torch.nn.functional.mse_loss(outputs.float().squeeze(-1), targets.float())

    return ScaledMSE()


@hookimpl
def plugtrain_losses():
    return [Component("pt-scaled-mse", scaled_mse, summary="MSE times a scale (declares no fits)")]
"""


@pytest.mark.slow
def test_a_component_that_declares_nothing_is_permitted_with_any_task(tmp_path):
    paths = make_dist(tmp_path / "plugin", "pt-loss", {"ptloss": "pt_loss"}, {"pt_loss": UNDECLARED_LOSS})
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    spec.write_text(spec.read_text().replace('name = "CrossEntropy"', 'name = "pt-scaled-mse"'))
    env = subprocess_env(PYTHONPATH=str(paths))
    for task in ("regression", "classification"):
        proc = run_cli("check", spec, "--set", f'run.task="{task}"', "--set", 'data.target="value"'
                       if task == "regression" else "run.seed=0", env=env)
        assert proc.returncode == 0, proc.stderr
    # and a declared built-in with the wrong task is refused in the same spec
    proc = run_cli("check", spec, "--set", 'run.task="regression"', "--set", 'loss.name="CrossEntropy"', env=env)
    assert proc.returncode == 2 and "fits classification runs" in proc.stderr


def test_a_warmup_longer_than_a_shortened_run_is_a_located_warning(tmp_path, capfd):
    spec = tiny_spec(tmp_path, epochs=1, steps=1)  # warmup_steps = 2, one step in all
    capfd.readouterr()
    assert cli("check", spec) == 0
    err = capfd.readouterr().err
    line = next(i for i, x in enumerate(spec.read_text().splitlines(), 1) if x.startswith("warmup_steps"))
    assert f"{spec}:{line}:16: warning: scheduler.warmup_steps (2) is longer than the whole run" in err, err


def test_a_missing_pretrained_file_stops_check_and_train_but_not_the_finished_run_it_started(tmp_path, cli_run,
                                                                                            one_torch_thread):
    """The weights file a run started from is read at its start only: once it is gone, `check` and `train` refuse
    the spec (file:line:col, nothing written), while evaluate, predict and export of the finished run still work
    (its weights come from its checkpoints)."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    spec = tiny_spec(tmp_path, epochs=1, steps=1, backbone_params=f'pretrained = "{weights.as_posix()}"')
    assert cli_run("train", spec).returncode == 0
    run_dir = tmp_path / "runs" / "tiny"
    weights.unlink()
    line = next(i for i, x in enumerate(spec.read_text().splitlines(), 1) if x.startswith("pretrained"))
    for command in ("check", "train"):
        proc = cli_run(command, spec, "--set", 'run.name="again"')
        assert proc.returncode == 2 and f"{spec}:{line}:14: backbone.pretrained: " in proc.stderr, proc.stderr
        assert "does not exist" in proc.stderr
    assert not (tmp_path / "runs" / "again").exists()
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    assert cli_run("evaluate", run_dir).returncode == 0
    proc = cli_run("predict", run_dir, image)
    assert proc.returncode == 0 and str(image) in proc.stdout, proc.stderr
    proc = cli_run("export", run_dir, "--format", "safetensors", "--output", tmp_path / "model.safetensors")
    assert proc.returncode == 0 and (tmp_path / "model.safetensors").is_file(), proc.stderr
