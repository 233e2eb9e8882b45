"""Every ready-to-run spec in ``specs/`` passes ``plugtrain check`` and trains a few steps through the real CLI.

The tests are parametrised over the files in ``specs/``, so a new spec is covered by itself. The specs are trained
as one queue (``plugtrain train A.toml B.toml ...``) in a child process run in a temporary directory, with the
example third-party plugin installed the way pip leaves it (a ``*.dist-info`` with its entry point, see
``helpers_plugins``), cut short with ``--set``: ``trainer.max_steps_per_epoch=2``, ``run.epochs=1``,
``data.num_workers=0``, ``data.batch_size=16``.

Paths in a spec are relative to the directory plugtrain runs in, as for a user in the repository root. A spec whose
``backbone.pretrained`` points into another spec's run directory (``runs/<run.name>/...``: a second stage) is queued
after that spec; any other ``pretrained`` file is written first by the test (the spec's own backbone, saved with a
1000-class head as a stand-in for downloaded weights). Hub weights (``pretrained = true``, ``"hf-hub:..."``) are put
into a Hugging Face cache made on disk the same way (``helpers_hub``), and every child runs with that ``HF_HOME`` and
``HF_HUB_OFFLINE=1``: nothing is downloaded. The run's checkpoint must then show that the weights were loaded, and
frozen layers must not have moved. A spec that reads files (``imagefolder``, ``csv``) gets a small data set written
where it looks (``helpers_datafiles``: a few dozen tiny PNGs, a manifest).
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers_datafiles import CLASSES, write_image_folder, write_regression_csv
from helpers_hub import hub_cache
from helpers_plugins import EXAMPLE_PLUGIN_SRC, make_example_dist, plugin_env

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.toml"))
SHORT = ["--set", "trainer.max_steps_per_epoch=2", "--set", "run.epochs=1", "--set", "data.num_workers=0",
         "--set", "data.batch_size=16"]
ENV = {"OMP_NUM_THREADS": "1"}


def _spec(path: Path) -> dict[str, Any]:
    """The spec as plugtrain composes it (``extends`` followed), not validated (the example plugin is not loaded
    in this process)."""
    from plugtrain.core.spec.loader import resolve

    res = resolve(path, validate=False)
    assert not res.problems, res.problems
    return res.data


@pytest.fixture(scope="module")
def plugin_paths(tmp_path_factory) -> list[Path]:
    """The example plugin, installed as pip would install it, for the child processes' PYTHONPATH."""
    return [make_example_dist(tmp_path_factory.mktemp("example-plugin")), EXAMPLE_PLUGIN_SRC]


def _hub_ref(spec: dict[str, Any]) -> Any:
    """The hub reference of the spec's ``pretrained`` (None for none or a local file)."""
    from plugtrain.plugins.backbones import weights_ref

    ref = weights_ref(spec["backbone"]["name"], spec["backbone"].get("pretrained"))
    return ref if ref is not None and ref.hub else None


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """A Hugging Face cache holding every hub weight a spec names: the spec's own backbone with a 1000-class head
    (a stand-in for the real download), saved with timm's ``save_for_hf``."""
    import torch

    from plugtrain.core.registry import get_registry

    home = tmp_path_factory.mktemp("hf-home")
    for path in SPECS:
        spec = _spec(path)
        ref = _hub_ref(spec)
        if ref is None or (home / "hub" / ("models--" + ref.repo.replace("/", "--"))).exists():
            continue
        torch.manual_seed(1)
        model = get_registry().get("backbones", spec["backbone"]["name"]).build({}, num_classes=1000)
        hub_cache(home, ref.repo, model)
    return home


def _env(plugin_paths: list[Path], hub_home: Path) -> dict[str, str]:
    out = plugin_env(plugin_paths, **ENV, HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        out.pop(key, None)
    return out


def _write_data(spec: dict[str, Any], work: Path) -> None:
    """The files an ``imagefolder`` or ``csv`` spec reads, written where it looks (relative to ``work``)."""
    data = spec["data"]
    if data["dataset"] == "imagefolder" and data.get("pixels") == "raw":  # scientific images: 16-bit TIFF stacks
        from helpers_sciimages import write_tiff_stack_folder

        write_tiff_stack_folder(work / data["root"])
    elif data["dataset"] == "imagefolder":
        write_image_folder(work / data["root"])
    elif data["dataset"] == "csv" and spec["run"].get("task") == "multilabel":  # Fashion-MNIST mosaics
        sys.path.insert(0, str(REPO / "benchmarks"))
        import data_multilabel

        data_multilabel.write(work / Path(data["csv"]).parent, train=32, val=16)
    elif data["dataset"] == "csv":
        write_regression_csv(work / data["csv"])
    elif data["dataset"] == "segmentation-pairs":  # the segmentation extra's data, derived from Fashion-MNIST
        sys.path.insert(0, str(REPO / "extras" / "plugtrain-segmentation" / "tests"))
        import seg_fmnist_data

        seg_fmnist_data.write(work / Path(data["train"]).parent, n_train=32, n_val=16, csv=True)
    elif data["dataset"] == "volumes":  # the monai extra's volumes (Fashion-MNIST) or signals (digits)
        sys.path.insert(0, str(REPO / "extras" / "plugtrain-monai" / "tests"))
        import monai_real_data

        if isinstance(data.get("image_size"), list) and len(data["image_size"]) == 1:
            monai_real_data.make_signals(work / Path(data["train"]).parent, limit=160)
        else:
            monai_real_data.make_volumes(work / Path(data["train"]).parent, per_class=12)  # 2 batches of 16


def _queue(specs: list[Path], work: Path) -> list[Path]:
    """The specs in an order where a stage comes after the spec whose run directory holds its pretrained file; the
    other pretrained files are written under ``work``."""
    producers = {_spec(p)["run"]["name"]: p for p in specs}
    order: list[Path] = []

    def visit(path: Path, seen: tuple[Path, ...] = ()) -> None:
        if path in order:
            return
        assert path not in seen, f"pretrained files form a cycle: {seen}"
        spec = _spec(path)
        _write_data(spec, work)
        pretrained = spec["backbone"].get("pretrained")
        if pretrained and _hub_ref(spec) is None:
            output_dir = Path(spec["run"].get("output_dir", "runs"))
            rel = Path(pretrained).relative_to(output_dir) if Path(pretrained).is_relative_to(output_dir) else None
            if rel is not None and rel.parts and rel.parts[0] in producers:
                visit(producers[rel.parts[0]], (*seen, path))
            else:
                _write_weights(spec, work / pretrained)
        order.append(path)

    for path in specs:
        visit(path)
    return order


def _write_weights(spec: dict[str, Any], path: Path) -> None:
    """The spec's own backbone with a 1000-class head (like downloaded weights) saved at ``path``."""
    import torch
    from safetensors.torch import save_file

    from plugtrain.core.registry import get_registry

    params = {k: v for k, v in spec["backbone"].items()
              if k not in ("name", "pretrained", "freeze", "unfreeze_after_epochs")}
    torch.manual_seed(1)
    model = get_registry().get("backbones", spec["backbone"]["name"]).build(params, num_classes=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, plugin_paths, hub_home) -> tuple[Path, str]:
    """Every spec trained a few steps, as one queue in a temporary working directory: ``(workdir, output)``."""
    work = tmp_path_factory.mktemp("spec-runs")
    order = _queue(SPECS, work)
    proc = subprocess.run([sys.executable, "-m", "plugtrain", "train", *map(str, order), *SHORT],
                          env=_env(plugin_paths, hub_home), capture_output=True, text=True, timeout=900, cwd=work)
    output = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, output
    return work, output


def test_specs_dir_holds_the_issue_list():
    names = {p.stem for p in SPECS}
    assert {"quickstart", "bioencoder-supcon", "bioencoder-arcface", "dkfz-classification", "regression-digits",
            "finetune-freeze", "example-plugin", "imagefolder", "csv-regression"} <= names
    assert len({_spec(p)["run"]["name"] for p in SPECS}) == len(SPECS), "two specs share a run.name"
    for path in SPECS:  # every spec says in its first lines what it is
        assert path.read_text(encoding="utf-8").startswith("# "), f"{path.name} has no header comment"


def test_every_spec_passes_check(plugin_paths, hub_home, tmp_path):
    """`plugtrain check` of the shipped specs as the queue `train` runs them (a stage after the spec whose checkpoint
    it starts from, other weights files written first), offline, in a working directory that holds their data."""
    order = _queue(SPECS, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "plugtrain", "check", *map(str, order)], cwd=tmp_path, timeout=300,
                          env=_env(plugin_paths, hub_home), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr, proc.stderr  # every hub weight is cached
    for path in SPECS:
        assert re.search(rf"{re.escape(path.name)}: OK", proc.stdout), proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_trains_a_few_steps(spec_path, trained, hub_home):
    import torch

    work, output = trained
    spec = _spec(spec_path)
    run_dir = work / spec["run"].get("output_dir", "runs") / spec["run"]["name"]
    assert re.search(rf"^{re.escape(spec['run']['name'])}: done in", output, re.M), output
    assert (run_dir / "metrics.csv").is_file(), output
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isfinite(float(rows[0]["train/loss"])) and math.isfinite(float(rows[0]["val/loss"]))
    primary = spec["run"].get("primary_metric") or {"classification": "val/accuracy", "regression": "val/mae",
                                                      "metric_learning": "val/precision_at_1"}[spec["run"]["task"]]
    assert math.isfinite(float(rows[0][primary]))
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "spec.toml").is_file() and list((run_dir / "tb").glob("events.out.tfevents.*"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    for logger in spec.get("loggers", []):  # a third-party logger wrote its file too
        if logger["name"] == "example-jsonl":
            assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
    if _hub_ref(spec) is not None:
        ref = _hub_ref(spec)
        (snapshot,) = (hub_home / "hub" / ("models--" + ref.repo.replace("/", "--")) / "snapshots").iterdir()
        _assert_started_from_pretrained(spec, snapshot / "model.safetensors", state["model"])
    elif spec["backbone"].get("pretrained"):
        _assert_started_from_pretrained(spec, work / spec["backbone"]["pretrained"], state["model"])
    _assert_read_its_files(spec, output)


def _assert_read_its_files(spec: dict[str, Any], output: str) -> None:
    """A spec over files trained on the data set the test wrote: its classes, its number of samples."""
    data = spec["data"]
    if data["dataset"] not in ("imagefolder", "csv"):
        return
    head = next(line for line in output.splitlines() if line.startswith(f"{spec['run']['name']}: starting;"))
    train, val = map(int, re.search(r"(\d+) train / (\d+) val samples", head).groups())
    if data["dataset"] == "imagefolder":  # 3 classes x 16 images, about a fifth held out (stratified)
        assert f"{len(CLASSES)} classes" in head and train + val == 48 and 7 <= val <= 12, head
    elif spec["run"].get("task") == "multilabel":  # 32 + 16 mosaics in train.csv and val.csv
        assert (train, val) == (32, 16) and "10 labels" in head, head
    else:  # 40 rows, a fifth held out
        assert (train, val) == (32, 8), head


def _assert_started_from_pretrained(spec: dict[str, Any], pretrained: Path, model: dict[str, Any]) -> None:
    """Two small steps cannot move loaded weights far; frozen ones must not move at all."""
    from plugtrain.plugins.backbones import load_state_dict_file

    source = load_state_dict_file(pretrained)
    shared = [k for k, v in model.items() if k in source and source[k].shape == v.shape
              and v.is_floating_point() and "running_" not in k]
    assert len(shared) > 10, f"too few weights in common with {pretrained}: {shared}"
    frozen = spec["backbone"].get("freeze", [])
    for key in shared:
        diff = float((model[key].float() - source[key].float()).abs().max())
        if any(key == p or key.startswith(p + ".") for p in frozen):
            assert diff == 0.0, f"frozen {key} moved by {diff}"
        else:
            assert diff < 0.05, f"{key} is {diff} away from the pretrained weights: were they loaded?"
    if frozen:  # and something else did train
        assert any(float((model[k].float() - source[k].float()).abs().max()) > 0 for k in shared
                   if not any(k.startswith(p + ".") for p in frozen)), "nothing trained"


#: What the issue's catalog asks to see used in at least one ready-to-run spec.
CATALOG = {
    "losses": {"CrossEntropy", "LabelSmoothing", "KLDiv", "SupCon", "ArcFace", "SubCenterArcFace", "CosFace",
               "TripletMargin", "BCEWithLogits", "MSE", "L1"},
    "optimizers": {"SGD", "Adam", "AdamW", "RAdam", "RMSprop", "Madgrad", "LookAhead", "Ranger", "SAM"},
    "schedulers": {"ReduceLROnPlateau", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
                   "ExponentialLR", "StepLR", "MultiStepLR", "OneCycleLR"},
    "metrics": {"accuracy", "top5", "f1_macro", "confusion_matrix", "mae", "rmse", "r2", "parity_plot",
                "precision_at_1", "map_at_r", "embeddings"},
}


def test_specs_use_every_catalog_name():
    from plugtrain.core.spec.model import DEFAULT_METRICS

    used: dict[str, set[str]] = {k: set() for k in CATALOG}
    features: set[str] = set()
    for path in SPECS:
        spec = _spec(path)
        used["losses"].add(spec["loss"]["name"])
        opt = spec["optimizer"]
        used["optimizers"] |= {opt["name"], opt.get("base", opt["name"])}
        if "optimizer" in spec["loss"]:
            used["optimizers"].add(spec["loss"]["optimizer"]["name"])
            features.add("loss.optimizer")
        if spec.get("scheduler"):
            used["schedulers"].add(spec["scheduler"]["name"])
            if spec["scheduler"].get("warmup_epochs") or spec["scheduler"].get("warmup_steps"):
                features.add("warmup")
        task = spec["run"].get("task", "classification")
        used["metrics"] |= {m["name"] for m in spec["metrics"]} if "metrics" in spec else set(DEFAULT_METRICS[task])
        data, backbone, trainer = spec["data"], spec["backbone"], spec.get("trainer", {})
        flags = {
            "m_per_class": data.get("sampler") == "m_per_class", "class_subset": bool(data.get("class_subset")),
            "num_views": data.get("num_views", 1) > 1, "mixup": "mixup" in spec, "ema": trainer.get("ema"),
            "swa": trainer.get("swa"), "gem": backbone.get("global_pool") == "gem",
            "embedding_dim": bool(backbone.get("embedding_dim")), "freeze": bool(backbone.get("freeze")),
            "pretrained": bool(backbone.get("pretrained")), "no_decay_norm_bias": opt.get("no_decay_norm_bias"),
            "OneOf": "OneOf" in path.read_text(), "Sequential": "Sequential" in path.read_text(),
            "save_samples": spec.get("augmentations", {}).get("save_samples", 0) > 0,
        }
        features |= {k for k, v in flags.items() if v}
    for kind, names in CATALOG.items():
        assert names <= used[kind], f"{kind} no spec uses: {sorted(names - used[kind])}"
    assert {"SmoothL1", "Huber"} & used["losses"]
    expected = {"loss.optimizer", "warmup", "m_per_class", "class_subset", "num_views", "mixup", "ema", "swa", "gem",
                "embedding_dim", "freeze", "pretrained", "no_decay_norm_bias", "OneOf", "Sequential", "save_samples"}
    assert expected <= features, f"no spec uses: {sorted(expected - features)}"
