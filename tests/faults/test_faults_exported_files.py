"""Bad exported files (issue 21, item 6): ``plugtrain predict`` and ``plugtrain.load_run`` on an exported model whose
sidecar was edited (not JSON, wrong JSON shape or types, missing keys, an input shape the model does not take, a spec
that no longer loads) or whose model file is truncated or empty, and on files that are not what predict takes (a
safetensors export, a checkpoint, the sidecar itself, a missing ``.onnx``). Every one is exit code 2 with one message
naming the file and what is wrong: no traceback. Slow: the fixture exports a real run to ONNX (torch.onnx's dynamo
exporter), pt2 and safetensors once; each case is then a fraction of a second."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import cli, tiny_spec
from helpers_commands import write_digit_pngs

import plugtrain
from plugtrain.core.errors import PlugtrainError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    """A tiny finished run and its ONNX, pt2 and safetensors exports; an image to predict."""
    root = tmp_path_factory.mktemp("exported")
    spec = tiny_spec(root, "bad", root / "runs", epochs=1, steps=2, batch_size=32)
    assert cli("train", spec) == 0
    run_dir = root / "runs" / "bad"
    files = {}
    for fmt in ("onnx", "pt2", "safetensors"):
        files[fmt] = root / f"model.{fmt}"
        assert cli("export", run_dir, "--format", fmt, "--output", files[fmt]) == 0
    image = write_digit_pngs(root, 1)[0][0]
    return run_dir, files, image


def copy_export(src, folder, name=None):
    """The exported file and its sidecar, copied into ``folder``; returns the copy's path."""
    dst = folder / (name or src.name)
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def one_error(proc, *needles):
    """Exit code 2, one ``plugtrain: error:`` line with every needle in it, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("plugtrain: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


def _del(*keys):
    def edit(d):
        for key in keys:
            *parents, last = key.split(".")
            node = d
            for p in parents:
                node = node[p]
            del node[last]
    return edit


def _set(key, value):
    def edit(d):
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


#: (id, edit of the sidecar dict, what the message must say besides the sidecar's name)
SIDECAR_EDITS = [
    ("no-task", _del("task"), "'task'"),
    ("no-input", _del("input"), "'input'"),
    ("no-channels", _del("input.channels"), "input.channels"),
    ("no-spec", _del("spec"), "'spec'"),
    ("no-class-names", _del("class_names"), "'class_names'"),
    ("no-format", _del("format"), "not a plugtrain export sidecar"),
    ("task-number", _set("task", 3), "task"),
    ("task-unknown", _set("task", "clustering"), "task"),  # no registered task has this name
    ("class-names-string", _set("class_names", "0123456789"), "class_names"),
    ("class-names-numbers", _set("class_names", list(range(10))), "class_names"),
    ("too-few-class-names", _set("class_names", ["a", "b"]), "class_names"),
    ("input-list", _set("input", [1, 16, 16]), "input"),
    ("channels-string", _set("input.channels", "1"), "input.channels"),
    ("channels-zero", _set("input.channels", 0), "input.channels"),
    ("channels-three", _set("input.channels", 3), "input"),
    ("height-wrong", _set("input.height", 32), "input"),
    ("width-float", _set("input.width", 16.5), "input.width"),
    ("shape-wrong", _set("input.shape", ["batch", 1, 32, 32]), "input.shape"),
    ("layout-nhwc", _set("input.layout", "NHWC"), "input.layout"),
    ("weights-unknown", _set("weights", "best"), "weights"),
    ("epoch-string", _set("epoch", "one"), "epoch"),
    ("spec-list", _set("spec", []), "spec"),
    ("spec-invalid", _set("spec.data.image_size", "big"), "spec"),
    ("spec-bad-key", _set("spec.data.batch_sise", 8), "spec"),
    ("spec-other-size", _set("spec.data.image_size", 32), "spec"),
    ("version-future", _set("format_version", 99), "format_version"),
    ("other-format", _set("export_format", "safetensors"), "export_format"),
    ("format-unknown", _set("export_format", "tflite"), "export_format"),
    ("mean-wrong-length", _set("normalization.mean", [0.5, 0.5, 0.5, 0.5]), "normalization"),
    ("normalization-string", _set("normalization", "imagenet"), "normalization"),
]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize(("edit", "needle"), [e[1:] for e in SIDECAR_EDITS], ids=[e[0] for e in SIDECAR_EDITS])
def test_an_edited_sidecar_is_one_message_naming_it(exported, tmp_path, cli_run, fmt, edit, needle):
    _, files, image = exported
    model = copy_export(files[fmt], tmp_path)
    side = model.with_name(model.name + ".json")
    record = json.loads(side.read_text())
    edit(record)
    side.write_text(json.dumps(record))
    one_error(cli_run("predict", model, image), str(side), needle)
    with pytest.raises(PlugtrainError, match=needle.replace("'", ".").replace("[", ".").replace("]", ".")):
        plugtrain.load_run(model)


@pytest.mark.parametrize("text", ["", "{", "not json", "[1, 2]", '"a string"', "null", "\x00\x01binary"],
                         ids=["empty", "unclosed", "text", "list", "string", "null", "binary"])
def test_a_sidecar_that_is_not_a_json_object_is_one_message(exported, tmp_path, cli_run, text):
    _, files, image = exported
    model = copy_export(files["onnx"], tmp_path)
    side = model.with_name(model.name + ".json")
    side.write_text(text)
    one_error(cli_run("predict", model, image), str(side))


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("keep", [0, 0.1, 0.5, 0.9], ids=["empty", "tenth", "half", "most"])
def test_a_truncated_model_file_is_one_message_naming_it(exported, tmp_path, cli_run, fmt, keep):
    _, files, image = exported
    model = copy_export(files[fmt], tmp_path)
    data = model.read_bytes()
    model.write_bytes(data[:int(len(data) * keep)])
    one_error(cli_run("predict", model, image), str(model))
    with pytest.raises(PlugtrainError, match="truncated or corrupt"):
        plugtrain.load_run(model)


def test_a_model_file_of_the_other_format_is_one_message(exported, tmp_path, cli_run):
    """A pt2 file named ``.onnx`` (with a sidecar that says onnx) and the other way round."""
    _, files, image = exported
    onnx = copy_export(files["onnx"], tmp_path)
    shutil.copyfile(files["pt2"], onnx)
    one_error(cli_run("predict", onnx, image), str(onnx))
    pt2 = copy_export(files["pt2"], tmp_path)
    shutil.copyfile(files["onnx"], pt2)
    one_error(cli_run("predict", pt2, image), str(pt2))


def test_files_predict_does_not_take_say_what_they_are(exported, tmp_path, cli_run):
    run_dir, files, image = exported
    err = one_error(cli_run("predict", files["safetensors"], image), str(files["safetensors"]), "weights only")
    assert "no such run directory" not in err and ".onnx" in err
    with pytest.raises(PlugtrainError, match="weights only"):
        plugtrain.load_run(files["safetensors"])
    err = one_error(cli_run("predict", run_dir / "checkpoints" / "best.pt", image), "checkpoint",
                    f"--checkpoint {run_dir / 'checkpoints' / 'best.pt'}")
    side = files["onnx"].with_name(files["onnx"].name + ".json")
    one_error(cli_run("predict", side, image), "sidecar", str(files["onnx"]))
    one_error(cli_run("predict", run_dir / "spec.toml", image), "spec")
    one_error(cli_run("predict", tmp_path / "missing.onnx", image), "missing.onnx: no such file")
    one_error(cli_run("evaluate", files["onnx"]), str(files["onnx"]), "not a run directory")
    one_error(cli_run("export", files["pt2"]), str(files["pt2"]), "not a run directory")


def test_a_missing_onnx_data_file_is_one_message(exported, tmp_path, cli_run):
    """An ONNX model whose sidecar names a ``.data`` file of weights that is not there."""
    _, files, image = exported
    model = copy_export(files["onnx"], tmp_path)
    side = model.with_name(model.name + ".json")
    record = json.loads(side.read_text())
    record["data_file"] = model.name + ".data"
    side.write_text(json.dumps(record))
    one_error(cli_run("predict", model, image), "model.onnx.data")


def test_the_exports_themselves_still_predict(exported, tmp_path, cli_run):
    """The control: the unedited files predict (exit 0), and so does a version 1 sidecar (before ``preprocessing``)."""
    _, files, image = exported
    for fmt in ("onnx", "pt2"):
        proc = cli_run("predict", files[fmt], image, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["image"] == str(image)
    model = copy_export(files["onnx"], tmp_path)
    side = model.with_name(model.name + ".json")
    record = json.loads(side.read_text())
    assert record["format_version"] == 2
    del record["preprocessing"], record["normalization"]["scale"]
    side.write_text(json.dumps({**record, "format_version": 1}))
    assert cli_run("predict", model, image).returncode == 0
