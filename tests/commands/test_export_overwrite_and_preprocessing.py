"""``plugtrain export`` never replaces a file silently and writes atomically (issue 21, item 3); the sidecar records
the validation pipeline's preprocessing, so a deployer resizing with OpenCV as it says reproduces ``plugtrain
predict`` (item 8); ``predict`` of the Python API takes a single path (item 7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, tiny_spec
from helpers_commands import write_digit_pngs

import plugtrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("overwrite")
    spec = tiny_spec(root, "ow", root / "runs", epochs=2, steps=6, batch_size=32)
    assert cli("train", spec, "--set", "optimizer.lr=1e-2") == 0
    return root / "runs" / "ow"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_refuses_an_existing_file_or_sidecar_without_overwrite(run_dir, tmp_path, cli_run):
    out = tmp_path / "model.safetensors"
    side = tmp_path / "model.safetensors.json"
    out.write_text("the user's file")
    proc = cli_run("export", run_dir, "--format", "safetensors", "--output", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{out}: already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_text() == "the user's file" and listing(tmp_path) == ["model.safetensors"]

    out.unlink()
    side.write_text("the user's notes")
    proc = cli_run("export", run_dir, "--format", "safetensors", "--output", out)
    assert proc.returncode == 2 and f"{side}: already exists" in proc.stderr, proc.stderr
    assert side.read_text() == "the user's notes" and listing(tmp_path) == ["model.safetensors.json"]

    out.write_text("the user's file")
    proc = cli_run("export", run_dir, "--format", "safetensors", "--output", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path) == ["model.safetensors", "model.safetensors.json"]  # no temporary files left
    assert json.loads(side.read_text())["file"] == "model.safetensors" and out.stat().st_size > 10_000


def test_the_default_output_is_not_replaced_either(run_dir, cli_run):
    assert cli_run("export", run_dir, "--format", "safetensors").returncode == 0
    out = run_dir / "export" / "best-model.safetensors"
    before = out.read_bytes()
    proc = cli_run("export", run_dir, "--format", "safetensors")
    assert proc.returncode == 2 and f"{out}: already exists" in proc.stderr, proc.stderr
    assert out.read_bytes() == before
    assert cli_run("export", run_dir, "--format", "safetensors", "--overwrite").returncode == 0
    assert listing(out.parent) == ["best-model.safetensors", "best-model.safetensors.json"]


@pytest.mark.slow
def test_a_failed_export_leaves_the_files_it_would_have_replaced(run_dir, tmp_path, cli_run):
    out = tmp_path / "model.onnx"
    out.write_text("the user's file")
    (tmp_path / "model.onnx.json").write_text("the user's notes")
    proc = cli_run("export", run_dir, "--output", out, "--overwrite", "--tolerance", "0")  # onnxruntime != eager
    assert proc.returncode == 1 and "more than --tolerance 0" in proc.stderr, proc.stderr
    assert out.read_text() == "the user's file" and (tmp_path / "model.onnx.json").read_text() == "the user's notes"
    assert listing(tmp_path) == ["model.onnx", "model.onnx.json"]


def test_export_refuses_an_output_it_cannot_write(run_dir, tmp_path, cli_run):
    proc = cli_run("export", run_dir, "--output", tmp_path / "model.pt2")  # --format onnx
    assert proc.returncode == 2 and "model.pt2" in proc.stderr and ".onnx" in proc.stderr, proc.stderr
    (tmp_path / "dir.onnx").mkdir()
    proc = cli_run("export", run_dir, "--output", tmp_path / "dir.onnx", "--overwrite")
    assert proc.returncode == 2 and "is a directory" in proc.stderr, proc.stderr
    (tmp_path / "file").write_text("x")
    proc = cli_run("export", run_dir, "--output", tmp_path / "file" / "model.onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert listing(tmp_path) == ["dir.onnx", "file"] and listing(tmp_path / "dir.onnx") == []


def deployer_probabilities(onnx_file: Path, images: list[Path]) -> np.ndarray:
    """What a deployer does with the sidecar and OpenCV alone (no plugtrain): read each file, apply the recorded
    steps of the validation pipeline (crops, resize with the recorded OpenCV interpolation), stack as float32 NCHW
    0..255, run onnxruntime, softmax."""
    import cv2
    import onnxruntime

    side = json.loads(onnx_file.with_name(onnx_file.name + ".json").read_text())
    pre = side["preprocessing"]
    batch = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if side["input"]["channels"] == 1 else cv2.IMREAD_COLOR)
        if side["input"]["channels"] == 3:
            assert pre["reader"]["channel_order"] == "RGB"
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        for step in pre["steps"]:
            if step["name"] == "CenterCrop":
                h, w = image.shape[:2]
                top, left = (h - step["height"]) // 2, (w - step["width"]) // 2
                image = image[top:top + step["height"], left:left + step["width"]]
            elif step["name"] == "Resize":
                image = cv2.resize(image, (step["width"], step["height"]),
                                   interpolation=getattr(cv2, step["interpolation"]))
            else:
                raise AssertionError(f"a step this deployer does not know: {step}")
        batch.append(image.reshape(image.shape[0], image.shape[1], -1).transpose(2, 0, 1))
    x = np.stack(batch).astype(np.float32)
    assert list(x.shape[1:]) == side["input"]["shape"][1:]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {side["input"]["name"]: x})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def predict_probabilities(cli_run, model: Path, images: list[Path]) -> np.ndarray:
    proc = cli_run("predict", model, *images, "--json", "--top-k", "10")
    assert proc.returncode == 0, proc.stderr
    out = np.zeros((len(images), 10))
    for i, r in enumerate(json.loads(proc.stdout)):
        for t in r["top_k"]:
            out[i, t["index"]] = t["probability"]
    return out


def digit_images(folder: Path, count: int) -> list[Path]:
    """The digits as the dataset yields them (32x32: 8x8 upscaled 4 times), saved as PNG files."""
    from PIL import Image

    from plugtrain.plugins.datasets.sklearn_digits import read_image

    paths = []
    for p in write_digit_pngs(folder, count, validation=True)[0]:
        Image.fromarray(read_image(p, in_chans=1)[..., 0], "L").save(p)
        paths.append(p)
    return paths


@pytest.mark.slow
def test_a_deployer_following_the_sidecar_reproduces_predict(run_dir, tmp_path, cli_run):
    out = tmp_path / "model.onnx"
    assert cli_run("export", run_dir, "--output", out).returncode == 0
    pre = json.loads((tmp_path / "model.onnx.json").read_text())["preprocessing"]
    [step] = pre["steps"]  # the built-in resize to data.image_size, read from the built pipeline
    assert {k: step[k] for k in ("name", "height", "width", "interpolation", "interpolation_flag")} == {
        "name": "Resize", "height": 16, "width": 16, "interpolation": "INTER_LINEAR", "interpolation_flag": 1}
    assert step["params"]["area_for_downscale"] is None and step["summary"].startswith("Resize")
    assert pre["reader"]["channels"] == 1 and pre["reader"]["dataset"] == "sklearn-digits"
    assert pre["normalization"]["scale"] == 255 and pre["normalization"]["mean"] == [0.5]
    images = digit_images(tmp_path, 12)
    want = predict_probabilities(cli_run, out, images)
    got = deployer_probabilities(out, images)
    assert np.abs(got - want).max() <= 1e-5
    # the control: what the interpolation is worth, on the same images (a bicubic resize predicts otherwise)
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    side["preprocessing"]["steps"][0]["interpolation"] = "INTER_CUBIC"
    (tmp_path / "model.onnx.json").write_text(json.dumps(side))
    assert np.abs(deployer_probabilities(out, images) - want).max() > 1e-3


@pytest.mark.slow
def test_the_sidecar_records_a_pipeline_of_the_spec_s_own(run_dir, tmp_path, cli_run):
    """A validation pipeline of the spec's own (a centre crop, then a bicubic resize, the built-in resize off): the
    sidecar records those steps from the built pipeline, and a deployer following them reproduces predict."""
    spec = tmp_path / "own.toml"
    spec.write_text((run_dir / "spec.toml").read_text())
    val = ('[{ name = "CenterCrop", height = 28, width = 28 }, '
           '{ name = "Resize", height = 16, width = 16, interpolation = 2 }]')
    proc = cli_run("train", spec, "--set", f'run.output_dir="{tmp_path / "runs"}"', "--set", "run.epochs=1",
                   "--set", "augmentations.resize=false", "--set", f"augmentations.val={val}")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "own.onnx"
    assert cli_run("export", tmp_path / "runs" / "ow", "--output", out).returncode == 0
    steps = json.loads((tmp_path / "own.onnx.json").read_text())["preprocessing"]["steps"]
    assert [(s["name"], s.get("interpolation")) for s in steps] == [("CenterCrop", None), ("Resize", "INTER_CUBIC")]
    images = digit_images(tmp_path, 6)
    assert np.abs(deployer_probabilities(out, images) - predict_probabilities(cli_run, out, images)).max() <= 1e-5


def test_predict_takes_a_single_path_as_well_as_a_list(run_dir, tmp_path):
    images = digit_images(tmp_path, 2)
    run = plugtrain.load_run(run_dir)
    many = run.predict([str(p) for p in images])

    def same(got, want):  # batches of 1 and 2 may differ in the last float bits
        assert [(r["image"], r["class"]) for r in got] == [(r["image"], r["class"]) for r in want]
        assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=1e-6)

    same(run.predict(str(images[0])), many[:1])
    same(run.predict(images[1]), many[1:])  # a PathLike
    from PIL import Image

    one = run.predict(np.asarray(Image.open(images[0])))  # one HxW array is one image, not 32 rows
    assert len(one) == 1 and one[0]["class"] == many[0]["class"] and one[0]["image"] == 0
    assert len(run.outputs(os.fspath(images[0]))) == 1
    with pytest.raises(plugtrain.PlugtrainError, match="nope.png: "):
        run.predict("nope.png")
