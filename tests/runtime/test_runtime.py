"""The runtime end to end on CPU: the quickstart cut short through the real CLI, the run directory contract,
TensorBoard read back, overwrite protection, a queue with a bad spec, evaluate / predict, dry run, precision,
gradient accumulation, early stopping, unfreezing, plain output."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART, cli, max_rel_diff, model_state

from plugtrain.core.spec import load_spec, to_dict

QUICK_SET = [
    "--set", 'backbone.name="test_efficientnet"', "--set", "data.image_size=16", "--set", "data.batch_size=32",
    "--set", "data.num_workers=0", "--set", "trainer.max_steps_per_epoch=2", "--set", "run.epochs=3",
    "--set", "trainer.checkpoint_every_epochs=1", "--set", "trainer.keep_top_k=2", "--set", "trainer.log_every_steps=1",
]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TB_TAGS = ("train/loss", "train/lr", "train/throughput", "val/loss", "val/accuracy")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root``: modification time (ns) and content."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_torch_thread):
    """The quickstart spec cut to 3 epochs x 2 steps of a tiny timm model, trained through the real CLI."""
    out = tmp_path_factory.mktemp("quick")
    overrides = [*QUICK_SET, "--set", f'run.output_dir="{out.as_posix()}"']
    assert cli("train", QUICKSTART, *overrides) == 0
    return out / "quickstart", overrides


# -- the run directory -------------------------------------------------------------------------------------------------
def test_quickstart_run_directory_contract(quick_run):
    run_dir, overrides = quick_run
    assert {p.name for p in run_dir.iterdir()} >= {"spec.toml", "env.json", "metrics.csv", "tb", "checkpoints"}

    # spec.toml is the resolved spec: it loads as a spec and equals the spec the run was given
    sets = [overrides[i + 1] for i in range(0, len(overrides), 2)]
    assert to_dict(load_spec(run_dir / "spec.toml")) == to_dict(load_spec(QUICKSTART, sets))

    env = json.loads((run_dir / "env.json").read_text())
    for key in ("python", "torch", "cuda", "plugins", "git", "world_size", "hostname", "start_time"):
        assert key in env, key
    assert env["world_size"] == 1 and env["torch"] == torch.__version__
    assert env["plugins"] and all(re.fullmatch(r"[\w.\-]+==[\w.\-+]+", p) for p in env["plugins"]), env["plugins"]
    assert any(p.startswith("plugtrain==") for p in env["plugins"])
    assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"])  # the spec lives in this repository

    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        for key in (*TB_TAGS, "val/top5", "val/f1_macro"):
            assert float(r[key]) == float(r[key]), key  # a number, not NaN

    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_checkpoints_last_best_and_top_k_epochs(quick_run):
    run_dir, _ = quick_run
    ckpts = run_dir / "checkpoints"
    rows = read_csv(run_dir / "metrics.csv")
    acc = {int(r["epoch"]): float(r["val/accuracy"]) for r in rows}
    # keep_top_k = 2 by val/accuracy (mode max); among equal values the earlier epoch ranks first
    kept = sorted(acc, key=lambda e: (-acc[e], e))[:2]
    assert sorted(p.name for p in ckpts.glob("epoch-*.pt")) == [f"epoch-{e:04d}.pt" for e in sorted(kept)]
    assert not list(ckpts.glob(".*tmp*"))  # no temporary file left behind

    last = load_ckpt(ckpts / "last.pt")  # weights_only=True: tensors and plain types only
    assert last["epoch"] == 3 and last["batch_in_epoch"] == 0 and last["global_step"] == 6
    best_epoch = max(acc, key=lambda e: (acc[e], -e))
    best = load_ckpt(ckpts / "best.pt")
    assert best["epoch"] == best_epoch and best["best"]["value"] == pytest.approx(acc[best_epoch])
    for e in kept:
        state = load_ckpt(ckpts / f"epoch-{e:04d}.pt")
        assert state["epoch"] == e and state["global_step"] == 2 * e
    # the weights are a timm model's state dict
    import timm

    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    model.load_state_dict(last["model"])


def test_tensorboard_event_files_hold_the_epoch_scalars_and_hparams(quick_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, _ = quick_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in TB_TAGS:
        assert tag in tags, (tag, tags)
        assert [e.step for e in acc.Scalars(tag)] == [2, 4, 6], tag  # one point per epoch, at the global step
    rows = read_csv(run_dir / "metrics.csv")
    for tag in TB_TAGS:
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx([float(r[tag]) for r in rows], rel=1e-6), tag

    # hparams: the resolved spec's values, with the final metrics
    meta = acc.SummaryMetadata("_hparams_/session_start_info")
    assert meta.plugin_data.plugin_name == "hparams"
    hparams = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content).session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == pytest.approx(3e-3)
    assert hparams["backbone.name"].string_value == "test_efficientnet"
    assert hparams["run.epochs"].number_value == 3
    final = acc.Scalars("hparam/val/accuracy")
    assert [e.value for e in final] == pytest.approx([float(rows[-1]["val/accuracy"])])


def test_resume_from_a_given_checkpoint_into_a_new_run_directory(quick_run, tmp_path, capsys):
    """``--resume PATH``: an epoch checkpoint of the quick run, continued in another directory, ends where the quick
    run ended, bit for bit."""
    run_dir, overrides = quick_run
    early = min(p for p in (run_dir / "checkpoints").glob("epoch-*.pt") if p.name != "epoch-0003.pt")
    start = load_ckpt(early)["epoch"]
    moved = [*overrides[:-2], "--set", f'run.output_dir="{tmp_path.as_posix()}"']
    capsys.readouterr()
    assert cli("train", QUICKSTART, *moved, "--resume", early) == 0
    assert f"resuming from {early} at epoch {start + 1}, batch 0" in capsys.readouterr().out
    got, want = load_ckpt(tmp_path / "quickstart" / "checkpoints" / "last.pt"), load_ckpt(
        run_dir / "checkpoints" / "last.pt")
    assert got["global_step"] == want["global_step"] == 6
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "quickstart" / "metrics.csv")] == list(range(start + 1, 4))


# -- evaluate and predict ----------------------------------------------------------------------------------------------
def test_evaluate_best_last_and_path(quick_run, capsys):
    run_dir, _ = quick_run
    rows = {int(r["epoch"]): r for r in read_csv(run_dir / "metrics.csv")}
    capsys.readouterr()
    assert cli("evaluate", run_dir) == 0
    out = capsys.readouterr().out
    record = json.loads((run_dir / "eval-val.json").read_text())
    best_epoch = record["epoch"]
    assert "val/accuracy" in out and record["split"] == "val" and record["samples"] == 359
    # the best checkpoint evaluated again gives the metrics it had when it was validated in training
    assert record["metrics"]["val/accuracy"] == pytest.approx(float(rows[best_epoch]["val/accuracy"]), abs=1e-6)
    assert record["metrics"]["val/loss"] == pytest.approx(float(rows[best_epoch]["val/loss"]), rel=1e-4)

    assert cli("evaluate", run_dir, "--checkpoint", "last", "--json") == 0
    got = json.loads(capsys.readouterr().out)
    assert got["epoch"] == 3 and got["metrics"]["val/accuracy"] == pytest.approx(float(rows[3]["val/accuracy"]))

    path = sorted((run_dir / "checkpoints").glob("epoch-*.pt"))[0]
    assert cli("evaluate", run_dir, "--checkpoint", path, "--json") == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(path)


def test_evaluate_errors(quick_run, capsys):
    run_dir, _ = quick_run
    assert cli("evaluate", run_dir, "--split", "test") == 2  # the digits have no test split
    assert "no test split" in capsys.readouterr().err
    assert cli("evaluate", run_dir.parent / "nope") == 2
    assert "no such run directory" in capsys.readouterr().err
    assert cli("evaluate", run_dir, "--checkpoint", run_dir / "spec.toml") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "spec.toml" in err


def test_predict_top_k_on_png_files(quick_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    run_dir, _ = quick_run
    digits = load_digits()
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8").repeat(4, 0).repeat(4, 1), "L").save(p)
        paths.append(p)
    capsys.readouterr()
    assert cli("predict", run_dir, *paths, "--top-k", "3", "--json") == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for r in results:
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] == str(t["index"]) for t in r["top_k"])
    assert cli("predict", run_dir, paths[0], "--checkpoint", "last") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(paths[0])) and len(line.splitlines()) == 1
    assert cli("predict", run_dir, tmp_path / "missing.png") == 2
    assert "missing.png: file not found" in capsys.readouterr().err


# -- run directory protection, queue, dry run --------------------------------------------------------------------------
def test_existing_run_directory_is_protected(spec_factory, tmp_path, capsys):
    spec = spec_factory(epochs=1, steps=2)
    run_dir = tmp_path / "runs" / "tiny"
    assert cli("train", spec) == 0
    before = snapshot(run_dir)
    capsys.readouterr()

    assert cli("train", spec) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume auto" in err and "--overwrite" in err
    assert snapshot(run_dir) == before  # untouched

    assert cli("train", spec, "--set", "run.epochs=2", "--resume", "auto") == 0  # continues: one more epoch
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["global_step"] == 4
    env = json.loads((run_dir / "env.json").read_text())
    assert len(env["resumes"]) == 1

    (run_dir / "stray.txt").write_text("x")
    assert cli("train", spec, "--overwrite") == 0  # replaced: a fresh run of one epoch
    assert not (run_dir / "stray.txt").exists()
    assert [int(r["epoch"]) for r in read_csv(run_dir / "metrics.csv")] == [1]
    assert "resumes" not in json.loads((run_dir / "env.json").read_text())


def test_queue_reports_a_bad_spec_and_runs_the_others(spec_factory, tmp_path, capsys):
    good = spec_factory("good", epochs=1, steps=1)
    bad = spec_factory("bad", epochs=1, steps=1, backbone="resnet_nope")
    good2 = spec_factory("good2", epochs=1, steps=1)
    capsys.readouterr()
    assert cli("train", good, bad, good2) == 2
    out, err = capsys.readouterr()
    assert str(bad) in err and "resnet_nope" in err and "Traceback" not in err
    assert "1 of 3 specs failed" in out
    for name in ("good", "good2"):
        assert (tmp_path / "runs" / name / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "bad").exists()


def test_dry_run_writes_nothing_and_prints_shapes(spec_factory, tmp_path, capsys):
    spec = spec_factory()
    capsys.readouterr()
    assert cli("train", spec, "--dry-run", "--set", "augmentations.save_samples=4") == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    samples = Path(re.search(r"augmented samples: (\S+\.png)", out)[1])  # in a fresh temporary directory
    from PIL import Image

    assert Image.open(samples).size[0] > 2 * 16 and tmp_path not in samples.parents
    import shutil

    shutil.rmtree(samples.parent)
    assert "images (16, 1, 16, 16) torch.float32" in out and "targets (16,) torch.int64" in out
    params = sum(p.numel() for p in model_for_spec().parameters())
    assert f"{params:,} parameters" in out and "output (16, 10)" in out


def model_for_spec():
    import timm

    return timm.create_model("test_efficientnet", num_classes=10, in_chans=1)


# -- precision, accumulation, callbacks --------------------------------------------------------------------------------
def poison_the_heap() -> None:
    """Leave freed CPU memory full of NaN, as earlier tests of the same process may leave it: a kernel that reads
    memory it never wrote then fails far more often than now and then."""
    junk = [torch.full((1 << n,), float("nan"), dtype=dt) for n in (10, 12, 14, 16, 18, 20)
            for dt in (torch.bfloat16, torch.float16, torch.float32)]
    del junk


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains(precision, spec_factory, tmp_path, capfd):
    """Autocast on the CPU (bf16; fp16 with a GradScaler, whose skipped first steps raise no scheduler warning),
    channels_last memory format.

    At 32 px, not the tiny spec's 16: at 16 px test_efficientnet's ``blocks.4.0.conv_dw`` (a 3x3 stride-2 depthwise
    conv) sees a 1x1 input, and torch 2.14's oneDNN bf16 channels_last depthwise convolution computes the weight
    gradient of exactly that shape from uninitialised memory (a NaN or a 1e33 gradient whenever freed memory holds
    garbage; reproduced with torch alone, not with contiguous tensors nor with oneDNN off). That made this test fail
    in a full suite and pass alone. The heap is poisoned first so that such a read shows here, not elsewhere."""
    spec = spec_factory(extra=f'precision = "{precision}"\nchannels_last = true', epochs=1, steps=8)
    poison_the_heap()
    assert cli("train", spec, "--set", "data.image_size=32") == 0
    assert "Warning" not in capfd.readouterr().err
    run_dir = tmp_path / "runs" / "tiny"
    row = read_csv(run_dir / "metrics.csv")[0]
    assert 0 < float(row["train/loss"]) < 10 and 0 < float(row["val/loss"]) < 10
    state = model_state(run_dir / "checkpoints" / "last.pt")
    init = model_for_spec_seeded()
    assert all(v.dtype == init[k].dtype for k, v in state.items())  # the master weights stay float32
    assert not torch.equal(state["conv_stem.weight"], init["conv_stem.weight"])


def model_for_spec_seeded(name: str = "test_efficientnet", seed: int = 0) -> dict:
    """The initial weights a run of the tiny spec starts from (the runtime seeds before building the backbone)."""
    from plugtrain.core.registry import get_registry

    torch.manual_seed(seed)
    return get_registry().get("backbones", name).build({"in_chans": 1}, num_classes=10).state_dict()


@pytest.mark.slow
def test_grad_accum_equals_the_doubled_batch(spec_factory, tmp_path):
    """On a model without batch-norm, 2 micro-batches of 16 accumulated = one batch of 32 (same samples, same
    augmentations, same loss scale)."""
    a = spec_factory("accum", backbone="test_efficientnet_ln", batch_size=16, steps=3, extra="grad_accum = 2")
    b = spec_factory("double", backbone="test_efficientnet_ln", batch_size=32, steps=3)
    assert cli("train", a) == 0 and cli("train", b) == 0
    sa = load_ckpt(tmp_path / "runs" / "accum" / "checkpoints" / "last.pt")
    sb = load_ckpt(tmp_path / "runs" / "double" / "checkpoints" / "last.pt")
    assert sa["global_step"] == sb["global_step"] == 6
    assert max_rel_diff(sa["model"], sb["model"]) <= 1e-5
    assert not torch.equal(sa["model"]["conv_stem.weight"], model_for_spec_seeded("test_efficientnet_ln")[
        "conv_stem.weight"])


def test_early_stopping_stops_the_run(spec_factory, tmp_path, capsys):
    # min_delta = 1: accuracy can never improve by that much, so the run stops after 1 + patience epochs
    spec = spec_factory(epochs=6, steps=1, extra='\n[[callbacks]]\nname = "early-stopping"\npatience = 1\n'
                                                  'min_delta = 1.0\n')
    capsys.readouterr()
    assert cli("train", spec) == 0
    out = capsys.readouterr().out
    assert "early stopping" in out
    run_dir = tmp_path / "runs" / "tiny"
    assert [int(r["epoch"]) for r in read_csv(run_dir / "metrics.csv")] == [1, 2]
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


def test_frozen_layers_unfreeze_after_epochs(spec_factory, tmp_path):
    """``backbone.freeze`` + ``unfreeze_after_epochs``: the backbone asks for the unfreeze callback, the frozen
    layers keep their initial weights for that many epochs, then train (the optimizer already holds them)."""
    spec = spec_factory(epochs=2, steps=2, extra="checkpoint_every_epochs = 1",
                        backbone_params='freeze = ["conv_stem", "blocks"]\nunfreeze_after_epochs = 1')
    assert cli("train", spec) == 0
    ckpts = tmp_path / "runs" / "tiny" / "checkpoints"
    init = model_for_spec_seeded()
    e1, e2 = model_state(ckpts / "epoch-0001.pt"), model_state(ckpts / "epoch-0002.pt")
    for key in ("conv_stem.weight", "blocks.0.0.conv.weight"):
        assert torch.equal(e1[key], init[key]), key  # frozen during epoch 1
        assert not torch.equal(e2[key], e1[key]), key  # trained during epoch 2
    assert not torch.equal(e1["classifier.weight"], init["classifier.weight"])
    assert load_ckpt(ckpts / "last.pt")["frozen"] == []


def test_requested_callbacks_are_added_once(spec_factory):
    from plugtrain.core.runtime import build
    from plugtrain.core.runtime.distributed import DistEnv

    cpu = DistEnv(device=torch.device("cpu"))
    freeze = 'freeze = ["conv_stem"]\nunfreeze_after_epochs = 1'
    assert build.build_run(load_spec(spec_factory()), cpu).callbacks == []
    callbacks = build.build_run(load_spec(spec_factory(backbone_params=freeze)), cpu).callbacks
    assert [type(c).__name__ for c in callbacks] == ["Unfreeze"] and callbacks[0].after_epochs is None
    listed = spec_factory(backbone_params=freeze, extra='\n[[callbacks]]\nname = "unfreeze"\nafter_epochs = 2\n')
    callbacks = build.build_run(load_spec(listed), cpu).callbacks
    assert [(type(c).__name__, c.after_epochs) for c in callbacks] == [("Unfreeze", 2)]  # the spec's, not twice


def test_reduce_lr_on_plateau_follows_the_primary_metric_direction(spec_factory):
    from plugtrain.core.runtime import build
    from plugtrain.core.runtime.distributed import DistEnv

    spec = load_spec(spec_factory(), ['scheduler={name = "ReduceLROnPlateau", patience = 0}'])
    built = build.build_run(spec, DistEnv(device=torch.device("cpu")))
    assert built.scheduler.mode == "max"  # val/accuracy
    spec = load_spec(spec_factory(), ['scheduler={name = "ReduceLROnPlateau"}', 'run.primary_metric="val/loss"',
                                         'run.mode="min"'])
    assert build.build_run(spec, DistEnv(device=torch.device("cpu"))).scheduler.mode == "min"


# -- output ------------------------------------------------------------------------------------------------------------
def test_plain_output_when_stdout_is_not_a_terminal(spec_factory, capfd):
    spec = spec_factory(epochs=2, steps=3)
    capfd.readouterr()
    assert cli("train", spec) == 0
    out, err = capfd.readouterr()
    assert "\x1b" not in out and "\x1b" not in err  # no ANSI escapes, no bar redraws
    assert "\r" not in out
    lines = out.splitlines()
    steps = [ln for ln in lines if re.match(r"epoch \d/2  step \d/3  global_step \d+  loss [\d.]+  lr [\d.e-]+  "
                                            r"\d+ img/s  eta \d+:\d\d$", ln)]
    assert len(steps) == 6  # one line per logged step (log_every_steps = 1)
    epochs = [ln for ln in lines if re.match(r"epoch \d/2  train/loss=", ln)]
    assert len(epochs) == 2 and all("val/accuracy=" in ln for ln in epochs)
    assert lines[0].startswith("tiny: starting;") and re.match(r"tiny: done in [\d.]+ s; best val/accuracy", lines[-1])
    assert len(lines) == 1 + 6 + 2 + 1  # nothing else


# -- each dataset kind, on small real files written here ---------------------------------------------------------------
def write_images(folder: Path, count: int, mode: str, start: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for i in range(count):
        shape = (12, 12, 3) if mode == "RGB" else (12, 12)
        p = folder / f"{start + i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(p)
        paths.append(p)
    return paths


def write_idx(path: Path, array) -> None:
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def dataset_files(kind: str, root: Path) -> tuple[dict, dict, int]:
    """``(data section, extra sections, test samples)`` for a small real data set of ``kind`` under ``root``."""
    import numpy as np

    if kind == "imagefolder":
        for split, n in (("train", 8), ("val", 3), ("test", 2)):
            for c, cls in enumerate(("cat", "dog", "owl")):
                write_images(root / split / cls, n, "RGB", 100 * c + 10 * len(split))
        return {"dataset": "imagefolder", "root": str(root)}, {}, 6
    if kind == "csv":
        paths = write_images(root / "img", 32, "L", 0)
        lines = ["path,target"] + [f"img/{p.name},{i % 7 / 2}" for i, p in enumerate(paths)]
        (root / "train.csv").write_text("\n".join(lines) + "\n")
        return ({"dataset": "csv", "csv": str(root / "train.csv"), "channels": 1, "val_fraction": 0.25},
                {"run": {"task": "regression"}, "loss": {"name": "MSE"}}, 0)
    root.mkdir(parents=True)  # idx
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 10, 10)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(40) % 4)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 10, 10)))
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(12) % 4)
    return {"dataset": "idx", "root": str(root), "channels": 1}, {}, 12


@pytest.mark.parametrize("kind", [pytest.param("imagefolder", marks=pytest.mark.slow), "csv", "idx"])
def test_each_dataset_kind_trains_evaluates_and_predicts(kind, tmp_path, capsys):
    import tomli_w

    data, extra, test_samples = dataset_files(kind, tmp_path / "data")
    in_chans = 3 if kind == "imagefolder" else 1
    spec = {
        "run": {"name": kind, "output_dir": str(tmp_path / "runs"), "epochs": 1, **extra.get("run", {})},
        "data": {**data, "image_size": 16, "batch_size": 8, "num_workers": 2 if kind == "imagefolder" else 0},
        "backbone": {"name": "test_efficientnet", "in_chans": in_chans},
        "loss": extra.get("loss", {"name": "CrossEntropy"}),
        "optimizer": {"name": "AdamW", "lr": 1e-3},
        "augmentations": {"train": [{"name": "HorizontalFlip"}]},
        "trainer": {"max_steps_per_epoch": 2},
    }
    path = tmp_path / f"{kind}.toml"
    path.write_text(tomli_w.dumps(spec))
    assert cli("train", path) == 0
    run_dir = tmp_path / "runs" / kind
    row = read_csv(run_dir / "metrics.csv")[0]
    assert float(row["train/loss"]) == float(row["train/loss"]) and float(row["val/loss"]) >= 0
    capsys.readouterr()
    if test_samples:
        assert cli("evaluate", run_dir, "--split", "test", "--json") == 0
        record = json.loads(capsys.readouterr().out)
        assert record["samples"] == test_samples and 0 <= record["metrics"]["test/accuracy"] <= 1
    image = next((tmp_path / "data").rglob("*.png"), None) or write_images(tmp_path / "png", 1, "L", 7)[0]
    assert cli("predict", run_dir, image, "--json") == 0
    result = json.loads(capsys.readouterr().out)[0]
    if kind == "csv":
        assert isinstance(result["prediction"], float)  # a regression run predicts a value
    else:
        assert abs(sum(t["probability"] for t in result["top_k"]) - 1) < 1e-5  # every class (top-k >= classes)


@pytest.mark.slow
def test_rich_progress_bar_in_a_terminal(spec_factory):
    """Under a pseudo-terminal: a rich bar (epoch, step/total, loss, lr, img/s, ETA), the per-epoch summary lines,
    and the cursor shown again at the end."""
    import os
    import pty
    import subprocess
    import sys

    from conftest import subprocess_env

    spec = spec_factory(epochs=2, steps=3)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "plugtrain", "train", str(spec)], stdout=slave,
                            stderr=subprocess.PIPE, env=subprocess_env(COLUMNS="200", TERM="xterm"))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    proc.stderr.close()
    out = b"".join(chunks).decode()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "\x1b[" in out  # styled, redrawn in place
    assert re.search(r"epoch 1/2 \S* ?━+ ?\S* ?\d/3 loss \S+  lr \S+  \S+ img/s \S+", plain), plain[-2000:]
    assert re.search(r"epoch 2/2 .*━+.*loss [\d.]+  lr [\d.e-]+  \d+ img/s", plain), plain[-2000:]
    assert len(re.findall(r"epoch \d/2  train/loss=", plain)) == 2
    assert out.rstrip().count("\x1b[?25l") == out.count("\x1b[?25h") >= 1  # the cursor is shown again
    assert re.search(r"tiny: done in [\d.]+ s", plain)
