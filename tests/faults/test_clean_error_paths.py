"""Issue 12, class 5: every command's error path is clean.

``train --resume``, ``evaluate`` and ``predict`` with a checkpoint of the wrong structure (an entry missing or of the
wrong type, a bad format version, an EMA that does not fit the model, pickled objects, bytes that are no checkpoint),
an image that is no image or a decompression bomb, an ``output_dir`` that is a file, holds a NUL byte or makes a name
too long, a spec nested hundreds of levels deep, a NUL byte in ``extends``, a spec with a UTF-8 byte-order mark:
exit 2, one message, no traceback, nothing written. Exit 1 is only for a run that failed while training.
The commands run in this process (``cli_run``): their error paths end before anything a fresh interpreter changes.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_spec
from PIL import Image

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import checkpoint as ckpt


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``plugtrain: error:`` message of a process that exited 2 without a traceback."""
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both
    assert "Traceback" not in both, both
    assert proc.stderr.count("plugtrain: error:") == 1, proc.stderr
    return proc.stderr


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
            for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run with EMA weights (trained in a child process): (spec, run dir, its last.pt state)."""
    tmp = tmp_path_factory.mktemp("finished")
    spec = tiny_spec(tmp, epochs=1, steps=2, extra="ema = true\nema_decay = 0.9")
    proc = run_cli("train", spec)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp / "runs" / "tiny"
    return spec, run_dir, torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def variants(state: dict) -> dict[str, tuple[dict, str]]:
    """Broken copies of a real checkpoint state, and a fragment of what the message must say."""
    def without(key):
        return {k: v for k, v in state.items() if k != key}

    model = state["model"]
    squeezed = {f"module.{k}": v.flatten()[:1] if v.ndim else v for k, v in model.items()}
    return {
        "no-model": (without("model"), "it has no 'model' entry"),
        "model-a-list": ({**state, "model": [1, 2, 3]}, "its 'model' entry is a list that is not a table of tensors"),
        "model-of-strings": ({**state, "model": {k: "x" for k in model}}, "'model' entry is a dict that is not"),
        "version-a-string": ({**state, "format_version": "one"}, "format_version is 'one', not a version number"),
        "version-zero": ({**state, "format_version": 0}, "format_version is 0"),
        "version-newer": ({**state, "format_version": 99}, "checkpoint format 99 is newer"),
        "meta-ill-typed": ({**state, "meta": {**state["meta"], "in_chans": "three"}}, "meta.in_chans is 'three'"),
        "ema-misfit": ({**state, "ema": squeezed}, "its EMA weights do not fit the model"),
        "step-a-string": ({**state, "global_step": "7"}, "'global_step' entry is a str"),
        "no-optimizers": (without("optimizers"), "it has no 'optimizers' entry (needed to resume)"),
    }


RESUME_ONLY = {"no-optimizers"}  # entries only resuming needs (a wrong type is refused whatever the purpose)


@pytest.fixture(scope="module")
def broken(finished, tmp_path_factory):
    _, _, state = finished
    folder = tmp_path_factory.mktemp("broken")
    out = {}
    for name, (s, fragment) in variants(state).items():
        path = folder / f"{name}.pt"
        torch.save(s, path)
        out[name] = (path, fragment)
    return out


@pytest.mark.parametrize("name", list(variants({"model": {}, "meta": {}})))
def test_load_refuses_a_checkpoint_of_the_wrong_structure_in_one_message(broken, finished, name):
    path, fragment = broken[name]
    model = None
    if name == "ema-misfit":
        import timm

        model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    purpose = "resume" if name in RESUME_ONLY else "read"
    with pytest.raises(PlugtrainError) as info:
        ckpt.load(path, purpose=purpose, model=model)
    assert fragment in str(info.value) and str(path) in str(info.value)
    if name in RESUME_ONLY:  # evaluate and predict do not need them
        assert ckpt.load(path)["format"] == ckpt.FORMAT


@pytest.mark.slow
@pytest.mark.parametrize("name", ["no-model", "model-a-list", "version-a-string", "version-newer", "ema-misfit",
                                  "step-a-string", "no-optimizers", "meta-ill-typed"])
def test_train_resume_from_a_broken_checkpoint_is_exit_2_and_writes_nothing(broken, finished, tmp_path, name,
                                                                            cli_run):
    spec, _, _ = finished
    path, fragment = broken[name]
    proc = cli_run("train", spec, "--resume", path, "--set", 'run.name="resumed"', "--set", "trainer.ema=true",
                   "--set", f'run.output_dir="{tmp_path.as_posix()}"', cwd=tmp_path)
    err = one_error(proc)
    assert fragment in err, err
    assert not (tmp_path / "resumed").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("name", ["no-model", "model-a-list", "version-a-string", "version-newer", "meta-ill-typed",
                                  "model-of-strings"])
def test_evaluate_and_predict_with_a_broken_checkpoint_are_exit_2_and_write_nothing(broken, finished, tmp_path,
                                                                                    command, name, cli_run):
    _, run_dir, _ = finished
    path, fragment = broken[name]
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    before = tree(run_dir)
    args = [run_dir, image] if command == "predict" else [run_dir]
    err = one_error(cli_run(command, *args, "--checkpoint", path))
    assert fragment in err, err
    assert tree(run_dir) == before


def test_a_pickled_checkpoint_is_refused_without_quoting_the_advice_to_unpickle_it(tmp_path):
    import collections

    path = tmp_path / "pickled.pt"
    torch.save({"format": ckpt.FORMAT, "model": collections.OrderedDict(), "x": collections.Counter("ab")}, path)
    torch.save({"format": ckpt.FORMAT, "obj": Path("x")}, path)
    with pytest.raises(PlugtrainError) as info:
        ckpt.load(path)
    msg = str(info.value)
    assert "refused to load" in msg and "weights_only=True" in msg and "pathlib" in msg.lower(), msg
    assert "weights_only=False" not in msg and "weights_only` set to `False`" not in msg and "trust" not in msg
    for data, fragment in ((b"", "empty or cut short"), (b"not a checkpoint at all" * 8, "not a torch checkpoint")):
        path.write_bytes(data)
        with pytest.raises(PlugtrainError, match=fragment):
            ckpt.load(path)


@pytest.mark.slow
def test_predict_refuses_an_image_that_is_no_image_or_a_decompression_bomb(finished, tmp_path, cli_run):
    _, run_dir, _ = finished
    before = tree(run_dir)
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    err = one_error(cli_run("predict", run_dir, text))
    assert str(text) in err
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpixel, a few kB on disk: over Pillow's bomb limit
    err = one_error(cli_run("predict", run_dir, bomb))
    assert str(bomb) in err
    assert tree(run_dir) == before


OUTPUT_DIRS = {
    "a-file": ('output_dir = "{tmp}/file.txt"', "is a file, not a directory"),
    "a-nul-byte": ('output_dir = "{tmp}/runs\\u0000x"', "NUL byte"),
    "a-name-too-long": ('output_dir = "{tmp}/' + "x" * 300 + '"', "longer than 255 bytes"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OUTPUT_DIRS))
def test_an_output_dir_no_run_directory_can_be_made_in_is_refused_by_check_and_train(tmp_path, case, cli_run):
    (tmp_path / "file.txt").write_text("a file\n")
    line, fragment = OUTPUT_DIRS[case]
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    text = spec.read_text()
    text = text.replace(next(x for x in text.splitlines() if x.startswith("output_dir")), line.format(tmp=tmp_path))
    spec.write_text(text)
    before = tree(tmp_path)
    for command in ("check", "train"):
        err = one_error(cli_run(command, spec))
        assert f"{spec}:3:14: run.output_dir" in err and (fragment in err or "bytes long" in err), err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("text, where, fragment", [
    ("[run]\nname = 'x'\nmean = " + "[" * 400 + "]" * 400 + "\n", "3:72", "nested more than 64 levels deep"),
    ("x = { " * 300 + "}" * 300 + "\n", "1:389", "nested more than 64 levels deep"),
    ("a" + ".a" * 3000 + " = 1\n", "1:1", "nested too deeply"),
    ('extends = "base\\u0000.toml"\n', "1:11", "a path cannot hold a NUL byte"),
])
def test_specs_no_reader_can_take_are_located_errors_not_tracebacks(tmp_path, text, where, fragment, cli_run):
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    err = one_error(cli_run("check", spec))
    assert f"{spec}:{where}: " in err and fragment in err, err


def test_a_spec_saved_with_a_byte_order_mark_is_accepted(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    proc = cli_run("check", spec)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{spec}: OK", proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xef\xbb\xbf[run]\nname = 3\n")
    assert f"{bad}:2:8: run.name" in one_error(cli_run("check", bad))  # positions count from after the mark


@pytest.mark.slow
def test_exit_1_is_only_for_a_run_that_failed_while_training(tmp_path, cli_run):
    """A NaN loss mid-run is exit 1 (the run had started); the same spec's bad input before training is exit 2."""
    spec = tiny_spec(tmp_path, epochs=1, steps=3, extra="clip_grad_norm = 1.0")
    proc = cli_run("train", spec, "--set", "optimizer.lr=1e30", "--set", "optimizer.weight_decay=0.0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "non-finite" in proc.stderr or "loss became" in proc.stderr, proc.stderr
    assert "optimizer.lr" in one_error(cli_run("train", spec, "--set", "optimizer.lr=-1.0"))
