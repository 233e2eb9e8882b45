"""``plugtrain export``: ONNX, pt2 and safetensors files of a real run, each checked by export itself against the
eager model and here again without plugtrain in the way (onnxruntime alone, ``torch.export.load``, safetensors into
a plain timm model); the sidecar; ``plugtrain predict`` on the ONNX file; the failure paths (over the tolerance:
exit 1, nothing left; onnxruntime missing: exit 2, one message)."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from conftest import cli, tiny_spec
from helpers_commands import write_digit_pngs

from plugtrain import __version__

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("export")
    spec = tiny_spec(root, "ema", root / "runs", epochs=2, steps=10, batch_size=32, extra="ema = true\nema_decay = 0.9")
    assert cli("train", spec, "--set", "optimizer.lr=1e-2") == 0
    return root / "runs" / "ema"


@pytest.fixture(scope="module")
def onnx_export(ema_run):
    """``plugtrain export RUN``: the default format (onnx), checkpoint (best) and weights (the run's EMA); the
    sidecar it wrote (``--json`` prints the same record: see the safetensors test)."""
    assert cli("export", ema_run) == 0
    return json.loads((ema_run / "export" / "best-ema.onnx.json").read_text())


def raw_validation_images(run_dir, count):
    """The run's first validation samples through its validation pipeline: ``float32`` pixel values 0..255."""
    from plugtrain.core.runtime import build
    from plugtrain.core.runtime.distributed import DistEnv
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.spec import load_spec

    built = build.build_run(load_spec(run_dir / "spec.toml"), DistEnv(device=torch.device("cpu")), purpose="eval")
    return Collate("raise")([built.val_data[(0, i)] for i in range(count)])["images"].float()


def timm_model(state_dict):
    """The backbone as anyone would build it: timm, the checkpoint's tensors, eval mode."""
    import timm

    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    model.load_state_dict(state_dict)
    return model.eval()


def checkpoint_weights(run_dir, name="best", key="ema"):
    state = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state[key].items()} if key != "model" else state["model"]


def eager(model, x):
    with torch.no_grad():
        return model((x - 127.5) / 127.5)  # the run's normalisation: mean = std = 0.5 (of 255)


def test_onnx_export_checks_itself_and_the_file_runs_alone(ema_run, onnx_export):
    import onnxruntime

    record = onnx_export
    out = ema_run / "export" / "best-ema.onnx"
    assert sorted(p.name for p in out.parent.iterdir()) == ["best-ema.onnx", "best-ema.onnx.json"]  # weights inside
    assert record["weights"] == "ema" and record["export_format"] == "onnx" and record["file"] == out.name
    assert record["data_file"] is None
    assert record["task"] == "classification" and record["class_names"] == [str(i) for i in range(10)]
    assert record["input"] == {"name": "images", "shape": ["batch", 1, 16, 16], "channels": 1, "height": 16,
                               "width": 16, "layout": "NCHW", "dtype": "float32",
                               "pixel_dtype": "uint8", "range": [0, 255]}  # the file's pixels: uint8 (raw: 16-bit, float)
    assert record["output"]["name"] == "logits" and record["output"]["shape"] == ["batch", 10]
    assert record["normalization"]["included"] is True and record["normalization"]["mean"] == [0.5]
    assert record["versions"]["plugtrain"] == __version__ and record["versions"]["onnxruntime"]
    assert record["components"]["backbone"]["name"] == "test_efficientnet"
    assert record["components"]["dataset"]["name"] == "sklearn-digits"
    assert record["spec"]["backbone"]["name"] == "test_efficientnet"
    parity = record["parity"]
    assert 0 <= parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == 1e-4 and parity["batch_sizes"] == [32, 1]
    # the sidecar's metrics are the EMA's, of the epoch best.pt holds
    with (ema_run / "metrics.csv").open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if int(r["epoch"]) == record["epoch"])
    assert record["metrics"] and all(k.startswith("val_ema/") for k in record["metrics"])
    assert record["metrics"]["val_ema/loss"] == pytest.approx(float(row["val_ema/loss"]), rel=1e-9)

    # onnxruntime alone, at batch sizes the export never saw (dynamic batch axis), against the eager EMA model
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert inp.name == "images" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 16, 16]
    model = timm_model(checkpoint_weights(ema_run))
    images = raw_validation_images(ema_run, 40)
    for batch in (images[:5], images[:1], images):
        got = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        assert float((got - eager(model, batch)).abs().max()) <= 1e-4
    uint8 = images[:3].to(torch.uint8).float()  # a uint8 image cast to float32 is the same input
    assert torch.equal(uint8, images[:3])


def test_predict_takes_the_exported_onnx_file(ema_run, onnx_export, tmp_path, capsys):
    paths, _ = write_digit_pngs(tmp_path, 4)
    onnx_file = ema_run / "export" / "best-ema.onnx"
    capsys.readouterr()
    assert cli("predict", onnx_file, *paths, "--json", "--top-k", "10") == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert cli("predict", ema_run, *paths, "--weights", "ema", "--json", "--top-k", "10") == 0
    from_run = json.loads(capsys.readouterr().out)
    for a, b in zip(from_onnx, from_run, strict=True):
        assert a["class"] == b["class"] and a["weights"] == b["weights"] == "ema"
        pa = {t["index"]: t["probability"] for t in a["top_k"]}
        pb = {t["index"]: t["probability"] for t in b["top_k"]}
        assert max(abs(pa[k] - pb[k]) for k in range(10)) <= 1e-5
    assert cli("predict", onnx_file, paths[0]) == 0
    captured = capsys.readouterr()
    assert "best-ema.onnx (exported from" in captured.err and len(captured.out.splitlines()) == 1

    assert cli("predict", onnx_file, paths[0], "--checkpoint", "last") == 2
    assert "an exported model has its weights built in" in capsys.readouterr().err
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(onnx_file.read_bytes())
    assert cli("predict", alone, paths[0]) == 2
    err = capsys.readouterr().err
    assert "no sidecar alone.onnx.json" in err and err.count("\n") == 1


def test_pt2_and_safetensors_load_back_outside_plugtrain(ema_run, tmp_path, capsys):
    import safetensors.torch

    images = raw_validation_images(ema_run, 6)
    model = timm_model(checkpoint_weights(ema_run, "last", "model"))
    capsys.readouterr()
    assert cli("export", ema_run, "--format", "pt2", "--checkpoint", "last", "--weights", "model",
               "--output", tmp_path / "m.pt2") == 0
    out = capsys.readouterr().out
    assert "last.pt (epoch 2), model weights (val/accuracy 0." in out and "max abs diff" in out
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    with torch.no_grad():
        for batch in (images[:3], images):
            assert float((program(batch) - eager(model, batch)).abs().max()) <= 1e-5
    sidecar = json.loads((tmp_path / "m.pt2.json").read_text())
    assert sidecar["weights"] == "model" and sidecar["checkpoint"].endswith("last.pt")

    assert cli("export", ema_run, "--format", "safetensors", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record == json.loads((ema_run / "export" / "best-ema.safetensors.json").read_text())
    assert record["weights"] == "ema" and record["normalization"]["included"] is False
    assert record["normalization"]["std"] == [0.5] and record["parity"]["max_abs_diff"] == 0
    tensors = safetensors.torch.load_file(str(ema_run / "export" / "best-ema.safetensors"))
    want = checkpoint_weights(ema_run)
    assert tensors.keys() == want.keys() and all(torch.equal(tensors[k], want[k]) for k in want)


def test_over_the_tolerance_is_exit_1_and_leaves_nothing(ema_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "strict.onnx"
    assert cli("export", ema_run, "--output", out, "--tolerance", "0") == 1  # onnxruntime is not bitwise eager
    err = capsys.readouterr().err
    assert "differs from the eager model by" in err and "more than --tolerance 0" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_export_and_predict_say_so(ema_run, onnx_export, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the package imports
    capsys.readouterr()
    assert cli("export", ema_run, "--output", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert err == ("plugtrain: error: --format onnx needs onnxruntime, not installed here: "
                   "pip install 'plugtrain[export]'\n")
    assert not (tmp_path / "m.onnx").exists()
    assert cli("predict", ema_run / "export" / "best-ema.onnx", tmp_path / "x.png") == 2
    assert "needs onnxruntime" in capsys.readouterr().err
    assert cli("export", ema_run, "--format", "safetensors", "--output", tmp_path / "m.safetensors") == 0


def test_export_refuses_bad_input(ema_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli("export", ema_run, "--weights", "swa") == 2
    assert "holds no SWA weights" in capsys.readouterr().err
    assert cli("export", tmp_path / "nope") == 2
    assert "no such run directory" in capsys.readouterr().err
    assert cli("export", ema_run, "--tolerance", "-1") == 2
    assert "--tolerance must be >= 0" in capsys.readouterr().err
