"""The Python API: ``plugtrain.train`` trains a real tiny run in this process and returns its metrics,
``plugtrain.check`` returns the typed spec or raises the CLI's message, ``plugtrain.load_run(...).predict`` gives what
``plugtrain predict`` gives; every error is a PlugtrainError; importing plugtrain stays cheap."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli, subprocess_env
from helpers_commands import write_digit_pngs

import plugtrain
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.spec import SpecError, load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec_dict(output_dir, name="api"):
    return {
        "run": {"name": name, "output_dir": str(output_dir), "epochs": 2},
        "data": {"dataset": "sklearn-digits", "image_size": 16, "batch_size": 32, "num_workers": 0},
        "backbone": {"name": "test_efficientnet", "in_chans": 1},
        "loss": {"name": "CrossEntropy"},
        "optimizer": {"name": "AdamW", "lr": 3e-3},
        "trainer": {"max_steps_per_epoch": 10},
    }


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, one_torch_thread):
    """``plugtrain.train(dict, set=...)`` in this process."""
    root = tmp_path_factory.mktemp("api")
    spec = spec_dict(root / "runs")
    return plugtrain.train(spec, set={"optimizer.lr": 1e-2}), spec


@pytest.fixture
def digit_files(tmp_path):
    return write_digit_pngs(tmp_path, 5)[0]


def test_importing_plugtrain_stays_cheap_and_the_api_loads_on_first_use():
    code = ("import sys, plugtrain\n"
            "assert 'torch' not in sys.modules and 'plugtrain.api' not in sys.modules\n"
            "assert {'train', 'check', 'load_run', 'Result', 'LoadedRun'} <= set(dir(plugtrain))\n"
            "assert plugtrain.check is plugtrain.api.check and 'torch' not in sys.modules\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        plugtrain.nope  # noqa: B018


def test_train_returns_the_run_s_metrics(api_run):
    result, _ = api_run
    with (result.run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and len(result.history) == 2
    assert result.metrics == result.history[-1]
    for key in ("train/loss", "val/loss", "val/accuracy"):
        assert result.metrics[key] == pytest.approx(float(rows[-1][key]), rel=1e-9), key
    assert result.metrics["val/accuracy"] > 0.5  # it learnt: lr 1e-2 from set= (3e-3 does not in 20 steps)
    best = max(range(2), key=lambda i: (float(rows[i]["val/accuracy"]), -i))
    assert result.best["metric"] == "val/accuracy" and result.best["epoch"] == best + 1
    assert result.best["value"] == pytest.approx(float(rows[best]["val/accuracy"]))
    assert load_spec(result.run_dir / "spec.toml").optimizer.params["lr"] == 1e-2
    assert (result.run_dir / "checkpoints" / "best.pt").is_file()


def test_train_and_check_raise_the_cli_s_errors(api_run, tmp_path, capsys):
    result, spec = api_run
    # the run exists: refused without overwrite, with the message the CLI prints
    with pytest.raises(PlugtrainError) as exc:
        plugtrain.train(spec)
    path = tmp_path / "api.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(spec))
    capsys.readouterr()
    assert cli("train", path) == 2
    assert capsys.readouterr().err == f"plugtrain: error: {exc.value}\n" and "--overwrite" in str(exc.value)

    bad = {"optimizer.lr": -1, "backbone.name": "resnet18"}
    with pytest.raises(SpecError) as exc:
        plugtrain.check(path, set=bad)
    assert cli("check", path, "--set", "optimizer.lr=-1", "--set", 'backbone.name="resnet18"') == 2
    assert capsys.readouterr().err == f"{exc.value}\n" and "optimizer.lr must be > 0, got -1" in str(exc.value)

    # a dict spec's problems are located in the dict, not in a temporary file
    broken = spec_dict(tmp_path / "runs", "broken")
    broken["data"]["batch_sizee"] = 3
    with pytest.raises(SpecError) as exc:
        plugtrain.train(broken)
    message = str(exc.value)
    assert "<spec dict>: unknown key 'batch_sizee' in [data]" in message and "spec.toml" not in message
    assert not (tmp_path / "runs").exists()

    assert plugtrain.check(spec).run.name == "api"
    assert plugtrain.check(path, set={"run.epochs": 7}).run.epochs == 7
    with pytest.raises(PlugtrainError, match="a spec is a path or a dict"):
        plugtrain.check(42)
    with pytest.raises(PlugtrainError, match="TOML has no null"):
        plugtrain.check(path, set={"scheduler": None})


def test_load_run_predicts_what_plugtrain_predict_does(api_run, digit_files, capsys):
    result, _ = api_run
    run = plugtrain.load_run(result.run_dir, device="cpu")
    assert isinstance(run, plugtrain.LoadedRun) and run.weights == "model" and not run.model.training
    assert run.device.type == "cpu" and next(run.model.parameters()).device.type == "cpu"
    assert run.class_names == [str(i) for i in range(10)] and run.checkpoint.endswith("best.pt")
    capsys.readouterr()
    assert cli("predict", result.run_dir, *digit_files, "--json", "--top-k", "3") == 0
    want = json.loads(capsys.readouterr().out)
    got = run.predict(digit_files, top_k=3)
    assert [r["class"] for r in got] == [r["class"] for r in want]
    assert [r["top_k"] for r in got] == [r["top_k"] for r in want]
    assert [r["image"] for r in got] == [str(p) for p in digit_files]

    # arrays are samples as the dataset yields them; transform is predict's preprocessing
    arrays = [run.read(p) for p in digit_files]
    assert arrays[0].shape == (32, 32, 1) and arrays[0].dtype == np.uint8  # 8x8 upscaled 4x, as the dataset does
    by_array = run.predict(arrays, top_k=3)
    assert [r["image"] for r in by_array] == list(range(5)) and [r["top_k"] for r in by_array] == [r["top_k"] for r in got]
    x = run.transform(digit_files[0])
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    with torch.no_grad():
        probs = run.model(x[None]).softmax(-1)[0]
    assert float(probs.max()) == pytest.approx(got[0]["probability"], abs=1e-6)
    assert int(probs.argmax()) == got[0]["index"]


def test_load_run_opens_an_exported_file_too(api_run, digit_files, tmp_path):
    result, _ = api_run
    assert cli("export", result.run_dir, "--format", "pt2", "--output", tmp_path / "m.pt2") == 0
    exported = plugtrain.load_run(tmp_path / "m.pt2")
    run = plugtrain.load_run(result.run_dir)
    a, b = exported.predict(digit_files), run.predict(digit_files)
    assert [r["class"] for r in a] == [r["class"] for r in b] and exported.weights == "model"
    assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b, strict=True)) <= 1e-5
    raw = exported.transform(digit_files[0])  # the exported graph normalises inside: it takes pixel values
    assert raw.dtype == torch.float32 and raw.shape == (1, 16, 16) and 0 <= float(raw.min()) < float(raw.max()) <= 255
    assert torch.equal((raw - 127.5) / 127.5, run.transform(digit_files[0]))


def test_load_run_errors_are_plugtrain_errors(api_run, tmp_path):
    result, _ = api_run
    cases = [
        (lambda: plugtrain.load_run(tmp_path / "nope"), "no such run directory"),
        (lambda: plugtrain.load_run(result.run_dir, weights="ema"), "holds no EMA weights"),
        (lambda: plugtrain.load_run(result.run_dir, weights="bogus"), "--weights must be one of model, ema, swa"),
        (lambda: plugtrain.load_run(result.run_dir, checkpoint="epoch-9.pt"), "epoch-9.pt"),
        (lambda: plugtrain.load_run(result.run_dir).predict([tmp_path / "missing.png"]), "file not found"),
        (lambda: plugtrain.load_run(result.run_dir).predict([np.zeros((8, 8))]), "uint8"),
        (lambda: plugtrain.load_run(result.run_dir).predict([], top_k=0), "--top-k must be >= 1"),
    ]
    assert plugtrain.PlugtrainError is PlugtrainError
    for call, message in cases:
        with pytest.raises(PlugtrainError) as exc:
            call()
        assert message in str(exc.value)


@pytest.mark.slow
def test_the_api_trains_the_quickstart_and_load_run_predicts_like_the_cli(tmp_path, digit_files, capsys):
    """The README's quick start through the API (shortened), then load_run against `plugtrain predict`."""
    from helpers_commands import REPO_QUICKSTART

    result = plugtrain.train(REPO_QUICKSTART, set={"run.epochs": 1, "trainer.max_steps_per_epoch": 3,
                                                   "data.num_workers": 0, "run.output_dir": str(tmp_path)})
    assert result.run_dir == tmp_path / "quickstart" and 0 <= result.metrics["val/accuracy"] <= 1
    capsys.readouterr()
    assert cli("predict", result.run_dir, *digit_files, "--json") == 0
    want = json.loads(capsys.readouterr().out)
    got = plugtrain.load_run(result.run_dir).predict(digit_files)
    assert [r["class"] for r in got] == [r["class"] for r in want]
    assert [r["top_k"] for r in got] == [r["top_k"] for r in want]
