"""Data faults, bad CLI input, security and numerical faults (issue 6, items 5, 6, 7 and 8), in real processes.

Where several specs fail independently they run as one queue (``plugtrain train A.toml B.toml ...``): the queue
reports each failing spec in one message prefixed with its path and goes on, so one child process checks many faults.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_faults import (
    child_env,
    fault_plugin_path,
    load,
    merge,
    plugtrain_cmd,
    report,
    write_spec,
)
from helpers_plugins import REPO, build_plugin_dists
from PIL import Image


def run(*args, env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(plugtrain_cmd(*args), capture_output=True, text=True, env=env or child_env(),
                          timeout=timeout, cwd=cwd or REPO, errors="replace")


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    """The error messages on stderr, each from its ``plugtrain: error:`` line up to the next ``plugtrain:`` line."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    msgs: list[str] = []
    current: list[str] | None = None
    for line in proc.stderr.splitlines():
        if line.startswith("plugtrain:"):
            current = [line] if line.startswith("plugtrain: error:") else None
            if current is not None:
                msgs.append("")
        elif current is not None:
            current.append(line)
        if current is not None:
            msgs[-1] = "\n".join(current)
    return msgs


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# -- item 5: data faults -----------------------------------------------------------------------------------------------
RNG = np.random.default_rng(0)


def _png(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (16, 16, 3) if mode == "RGB" else (16, 16)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, train: dict[str, int], val: int = 4) -> Path:
    """``root/train/<class>/<i>.png`` (counts per class) and ``root/val/<class>/<i>.png``."""
    for c, n in train.items():
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / "train" / c / f"{i}.png")
        for i in range(val):
            _png(root / "val" / c / f"{i}.png")
    return root


def _data_spec(tmp: Path, name: str, dataset: dict, on_error: str) -> Path:
    return write_spec(tmp / f"{name}.toml", tmp / "runs", run={"name": name, "epochs": 2},
                      data={"dataset": None, **dataset, "upscale": None, "batch_size": 4, "num_workers": 1,
                            "on_error": on_error},
                      backbone={"in_chans": 3}, trainer={"max_steps_per_epoch": None, "log_every_steps": 50})


def _manifest(root: Path, rows: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_data_faults_raise_names_the_file(tmp_path):
    corrupt = _folder(tmp_path / "corrupt", {"a": 7, "b": 8})
    (corrupt / "train" / "a" / "bad.png").write_bytes(os.urandom(200))
    zero = _folder(tmp_path / "zero", {"a": 7, "b": 8})
    (zero / "train" / "b" / "zero.png").write_bytes(b"")
    empty = _folder(tmp_path / "empty", {"a": 8, "b": 8})
    (empty / "train" / "c").mkdir()
    rows = [(str(_png(tmp_path / "csv" / f"{i}.png")), str(i % 2)) for i in range(12)]
    missing = _manifest(tmp_path / "csv", rows[:5] + [("gone.png", "0")] + rows[5:])
    out_of_range = _manifest(tmp_path / "csv2", rows[:3] + [(rows[3][0], "7")] + rows[4:])
    specs = [
        _data_spec(tmp_path, "corrupt", {"dataset": "imagefolder", "root": str(corrupt)}, "raise"),
        _data_spec(tmp_path, "zero", {"dataset": "imagefolder", "root": str(zero)}, "raise"),
        _data_spec(tmp_path, "empty", {"dataset": "imagefolder", "root": str(empty)}, "raise"),
        _data_spec(tmp_path, "missing", {"dataset": "csv", "csv": str(missing), "num_classes": 2}, "raise"),
        _data_spec(tmp_path, "range", {"dataset": "csv", "csv": str(out_of_range), "num_classes": 2}, "raise"),
    ]
    proc = run("train", *specs)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msgs = errors(proc)
    expected = {
        "corrupt": (str(corrupt / "train" / "a" / "bad.png"), "not a readable image", "on_error"),
        "zero": (str(zero / "train" / "b" / "zero.png"), "empty file (0 bytes)"),
        "empty": (str(empty / "train" / "c"), "holds no images", 'on_error = "skip"'),
        "missing": (f"{missing}:7", "gone.png", "file not found"),
        "range": (f"{out_of_range}:5", "label 7 out of range"),
    }
    assert len(msgs) == len(specs), proc.stderr
    for spec, msg in zip(specs, msgs, strict=True):
        assert str(spec) in msg, msg
        for needle in expected[spec.stem]:
            assert needle in msg, (needle, msg)
    assert "5 of 5 specs failed" in proc.stdout
    report("data faults, on_error=raise", specs=len(specs), exit_code=proc.returncode,
           messages=" | ".join(m.split("error: ", 1)[1][:90] for m in msgs))


@pytest.mark.slow
def test_data_faults_skip_are_counted_per_epoch_never_silent(tmp_path):
    root = _folder(tmp_path / "images", {"a": 6, "b": 7})
    bad = root / "train" / "a" / "bad.png"
    bad.write_bytes(os.urandom(300))
    zero = root / "train" / "a" / "zero.png"
    zero.write_bytes(b"")
    _png(root / "train" / "b" / "gray.png", mode="L")  # a grayscale image in an RGB set: converted, not a fault
    (root / "train" / "c").mkdir()  # an empty class folder: kept with no samples, reported
    rows = [(str(_png(tmp_path / "csv" / f"{i}.png")), str(i % 2)) for i in range(12)]
    manifest = _manifest(tmp_path / "csv", rows[:2] + [("gone.png", "1"), (rows[2][0], "9")] + rows[2:])
    folder_spec = _data_spec(tmp_path, "folder", {"dataset": "imagefolder", "root": str(root)}, "skip")
    csv_spec = _data_spec(tmp_path, "manifest", {"dataset": "csv", "csv": str(manifest), "num_classes": 2}, "skip")
    proc = run("train", folder_spec, csv_spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout

    # the image folder: 16 training files, 2 unreadable, every epoch sees all 16 (batch 4, 4 batches)
    with (tmp_path / "runs" / "folder" / "metrics.csv").open() as f:
        rows_folder = list(csv.DictReader(f))
    skipped = [float(r["data/skipped"]) for r in rows_folder]
    assert skipped == [2.0, 2.0], skipped
    for epoch in (1, 2):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"epoch {epoch}: skipped"))
        assert "skipped 2 unreadable sample(s)" in line and str(bad) in line and str(zero) in line, line
    assert f"{root / 'train' / 'c'}: class folder holds no images" in out
    assert "gray.png" not in out  # converted, not skipped

    # the manifest: 2 bad rows dropped while indexing, named with csv:line, counted
    assert "train split: 2 sample(s) skipped while indexing" in out
    assert f"{manifest}:4: {tmp_path / 'csv' / 'gone.png'}: file not found" in out
    assert f"{manifest}:5: " in out and "label 9 out of range" in out
    with (tmp_path / "runs" / "manifest" / "metrics.csv").open() as f:
        assert [float(r["data/skipped"]) for r in csv.DictReader(f)] == [0.0, 0.0]
    report("data faults, on_error=skip", skipped_per_epoch=skipped, indexed_skips=2,
           empty_class_reported=True, grayscale_converted=True)


# -- item 6: bad CLI input ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_cli_input_exit_2_one_message_nothing_written(tmp_path, cli_run):
    out_dir = tmp_path / "runs"
    good = write_spec(tmp_path / "good.toml", out_dir)
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "binary.toml").write_bytes(os.urandom(64) + b"\x00\xff")
    (tmp_path / "empty.toml").write_bytes(b"")
    locked = write_spec(tmp_path / "locked.toml", out_dir)
    os.chmod(locked, 0)
    unicode_spec = write_spec(tmp_path / "spéc-日本.toml", out_dir, run={"name": "ランü"},
                              backbone={"name": "tést_resnet"})
    cases = [
        (["train", tmp_path / "missing.toml"], ["missing.toml", "no such file"]),
        (["train", tmp_path / "folder.toml"], ["folder.toml", "is a directory"]),
        (["train", tmp_path / "binary.toml"], ["binary.toml", "not a UTF-8 text file"]),
        (["train", tmp_path / "empty.toml"], ["empty.toml", "[run]"]),
        (["train", tmp_path / "ünïcödé-名前.toml"], ["ünïcödé-名前.toml", "no such file"]),
        (["train", unicode_spec], ["spéc-日本.toml", "tést_resnet"]),
        (["train", good, "--set", "data.batch_size=10**12"], ["data.batch_size", "10**12"]),
        (["train", good, "--set", "data.batch_size=1000000000000"], ["1000000000000", "fewer than one global batch"]),
        (["train", good, "--set", "data.batch_size=-3"], ["batch_size", "-3"]),
        (["train", good, "--resume", tmp_path / "nope.pt"], ["nope.pt", "no such checkpoint"]),
    ]
    if os.geteuid() != 0:  # root reads any file whatever its mode
        cases.append((["train", locked], ["locked.toml", "ermission"]))
    measured = []
    for args, needles in cases:
        proc = cli_run(*args, cwd=REPO)
        msgs = errors(proc)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(msgs) == 1, (args, proc.stderr)
        for needle in needles:
            assert needle in proc.stderr, (args, needle, proc.stderr)
        assert not out_dir.exists(), (args, tree(out_dir))
        measured.append(f"{Path(str(args[1])).name}{' ' + ' '.join(map(str, args[2:])) if len(args) > 2 else ''}")
    report("bad CLI input", cases=len(cases), all_exit_2=True, one_message_each=True, written=0,
           skipped_unreadable_as_root=os.geteuid() == 0)


# -- item 7: security --------------------------------------------------------------------------------------------------
EVIL = """
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"format": "plugtrain-checkpoint", "format_version": 1, "model": {{}}, "payload": Evil()}}, "{path}")
"""


@pytest.mark.slow
def test_pickled_checkpoint_and_weights_are_refused(tmp_path, cli_run):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    subprocess.run([os.sys.executable, "-c", EVIL.format(marker=marker, path=evil)], check=True, env=child_env())
    assert evil.stat().st_size > 0 and not marker.exists()
    spec = write_spec(tmp_path / "s.toml", tmp_path / "runs")
    run_dir = tmp_path / "a-run"
    run_dir.mkdir()
    (run_dir / "spec.toml").write_text(spec.read_text())
    cases = [
        ("train", spec, "--resume", evil),
        ("train", spec, "--set", f'backbone.pretrained="{evil}"'),
        ("evaluate", run_dir, "--checkpoint", evil),
    ]
    for args in cases:
        proc = cli_run(*args, cwd=REPO)
        msgs = errors(proc)
        assert proc.returncode == 2 and len(msgs) == 1, (args, proc.stderr)
        assert "refused to load" in msgs[0] and "pickled" in msgs[0] and "weights_only=True" in msgs[0], msgs[0]
        assert not marker.exists(), "a checkpoint ran code"
    assert not (tmp_path / "runs").exists()
    report("pickled checkpoint", cases=len(cases), refused=len(cases), code_ran=marker.exists())


@pytest.mark.slow
def test_run_names_spec_values_and_plugins_cannot_escape_or_execute(tmp_path):
    marker = tmp_path / "pwned"
    out_dir = tmp_path / "runs"
    outside = tmp_path / "outside"
    outside.mkdir()
    out_dir.mkdir()
    (out_dir / "link").symlink_to(outside)
    payload = f"__import__('os').system('touch {marker}')"

    def spec(name: str, **sections) -> Path:
        return write_spec(tmp_path / f"{name}.toml", out_dir, **merge({"run": {"name": name}}, sections))

    cases = {
        spec("dotdot", run={"name": "../x"}): "leaves output_dir",
        spec("absolute", run={"name": str(tmp_path / "abs")}): "absolute path",
        spec("symlink", run={"name": "link/inside"}): "outside output_dir",
        spec("sysname", backbone={"name": "os.system"}): "os.system",
        spec("pluginname", loss={"name": "os:system"}): "os:system",
        spec("evalvalue", optimizer={"lr": payload}): "lr",
        spec("evalname", backbone={"name": payload}): "__import__",
        spec("brokenfactory", loss={"name": "broken-factory"}): "broken-factory",
        spec("brokenplugin", loss={"name": "something-from-broken"}): "something-from-broken",
    }
    plugins = build_plugin_dists(tmp_path / "plugins")
    paths = [fault_plugin_path(tmp_path / "faults"), *plugins["broken"]]
    proc = run("train", *cases, env=child_env(paths))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msgs = errors(proc)
    assert len(msgs) == len(cases), proc.stderr
    for (path, needle), msg in zip(cases.items(), msgs, strict=True):
        assert str(path) in msg and needle in msg, (needle, msg)
    by_name = {Path(p).stem: m for p, m in zip(cases, msgs, strict=True)}
    assert "(faults)" in by_name["brokenfactory"] and "ZeroDivisionError" in by_name["brokenfactory"]
    assert "unknown" in by_name["sysname"].lower()
    assert "plugin 'broken' (broken-dist==2.3) failed to load" in proc.stderr  # a failing plugin is always named
    assert not marker.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists() and not list(outside.iterdir())
    assert tree(out_dir) == ["link"]
    report("security", specs=len(cases), refused=len(msgs), code_ran=marker.exists(),
           written_outside=len(list(outside.iterdir())))


# -- item 8: numerical faults ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_loss_at_step_k_exits_1_names_step_and_keeps_last_good_checkpoint(tmp_path):
    """A first run writes last.pt at the end of epoch 1 (step 4) with a loss that is NaN at step 5; resumed for more
    epochs, the run must stop with exit 1 naming step 5 (found before the step-6 checkpoint), and last.pt / best.pt
    must be byte-identical to before."""
    env = child_env([fault_plugin_path(tmp_path / "faults")])
    spec = write_spec(tmp_path / "nan.toml", tmp_path / "runs", run={"name": "nan", "epochs": 1},
                      loss={"name": "nan-at-step", "step": 5},
                      trainer={"checkpoint_every_steps": 2, "log_every_steps": 50})
    first = run("train", spec, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    ckpts = tmp_path / "runs" / "nan" / "checkpoints"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpts.iterdir()}
    assert load(ckpts / "last.pt")["global_step"] == 4
    proc = run("train", spec, "--resume", "auto", "--set", "run.epochs=3", env=env)  # the loss may not change
    assert proc.returncode == 1, proc.stdout + proc.stderr
    msgs = errors(proc)
    assert len(msgs) == 1, proc.stderr
    assert "the loss became nan at step 5" in msgs[0] and "epoch 2" in msgs[0], msgs[0]
    assert str(ckpts / "last.pt") in msgs[0]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpts.iterdir()}
    assert after == before, (before, after)
    report("NaN loss", nan_at_step=5, exit_code=proc.returncode, message=msgs[0].split("error: ", 1)[1][:120],
           checkpoints_unchanged=sorted(after))



@pytest.mark.slow
def test_skip_under_ddp_when_a_rank_gets_a_whole_batch_of_unreadable_files(tmp_path):
    """2 ranks x 2 images a batch from a folder that is mostly unreadable files: some micro-batches are empty on one
    rank only. That rank must still join the gradient reduction (a placeholder forward weighted 0), or the other one
    waits for it forever (here: PLUGTRAIN_DIST_TIMEOUT=60 turns such a hang into a failure)."""
    from helpers_faults import torchrun_cmd

    root = _folder(tmp_path / "images", {"a": 4, "b": 4}, val=2)
    for i in range(20):
        (root / "train" / "a" / f"bad{i:02d}.png").write_bytes(os.urandom(120))
    spec = write_spec(tmp_path / "ddpskip.toml", tmp_path / "runs", run={"name": "ddpskip", "epochs": 2},
                      data={"dataset": "imagefolder", "root": str(root), "upscale": None, "batch_size": 2,
                            "num_workers": 0, "on_error": "skip"},
                      backbone={"in_chans": 3}, trainer={"max_steps_per_epoch": None, "log_every_steps": 50})
    proc = subprocess.run(torchrun_cmd("train", spec, nproc=2), capture_output=True, text=True, timeout=400,
                          env=child_env(PLUGTRAIN_DIST_TIMEOUT="60"), cwd=REPO, errors="replace")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (tmp_path / "runs" / "ddpskip" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["data/skipped"]) for r in rows] == [20.0, 20.0]  # both ranks' skips, summed
    state = load(tmp_path / "runs" / "ddpskip" / "checkpoints" / "last.pt")
    assert state["global_step"] == 2 * 7  # 28 files / global batch 4
    assert all(bool(v.isfinite().all()) for v in state["model"].values() if v.is_floating_point())
    report("DDP skip, a rank with a whole unreadable batch", skipped_per_epoch=[20, 20], steps=state["global_step"])
