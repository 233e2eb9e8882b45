"""The multilabel task's components on their own: BCE with pos_weight and ASL against their formulas, torchmetrics'
multilabel metrics against their definitions, the csv manifest's and webdataset's multi-hot targets (and their bad input),
mixup of multi-hot targets, and the Fashion-MNIST mosaics the examples train on."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry

REPO = Path(__file__).resolve().parents[2]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _loss(name: str, num_classes: int = 5, **params):
    return get_registry().get("losses", name).build(params, num_classes=num_classes, embedding_dim=0)


def _metric(name: str, num_classes: int = 5, **params):
    return get_registry().get("metrics", name).build(params, num_classes=num_classes, task="multilabel",
                                                    task_params={"threshold": 0.5})


def _batch(n: int = 64, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, (torch.rand(n, c, generator=g) < 0.3).float()


# -- losses ----------------------------------------------------------------------------------------------------------
def test_bce_pos_weight_as_a_list_or_a_number():
    logits, y = _batch()
    w = [1.0, 2.0, 3.0, 0.5, 1.0]
    expected = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(w))
    assert torch.allclose(_loss("BCEWithLogits", pos_weight=w)(logits, y), expected)
    expected = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.full((5,), 4.0))
    assert torch.allclose(_loss("BCEWithLogits", pos_weight=4.0)(logits, y), expected)
    with pytest.raises(PlugtrainError, match="pos_weight lists 2 weights but the run has 5 classes"):
        _loss("BCEWithLogits", pos_weight=[1.0, 2.0])


def asl_formula(logits, y, gamma_neg, gamma_pos, clip):
    """Ridnik et al. 2021, eq. (1)-(4), element by element in float64: L+ = (1-p)^g+ log(p),
    L- = p_m^g- log(1-p_m), p_m = max(p - m, 0); the loss is -(y L+ + (1-y) L-), here averaged."""
    total = 0.0
    for x, t in zip(logits.double().reshape(-1).tolist(), y.double().reshape(-1).tolist(), strict=True):
        p = 1 / (1 + np.exp(-x))
        pm = max(p - clip, 0.0)
        lp = (1 - p) ** gamma_pos * np.log(p)
        ln = pm ** gamma_neg * np.log(1 - pm)
        total += -(t * lp + (1 - t) * ln)
    return total / logits.numel()


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 0.0, 0.05), (2.0, 1.0, 0.0), (0.0, 0.0, 0.0)])
def test_asl_is_the_papers_formula(gamma_neg, gamma_pos, clip):
    logits, y = _batch(16, 4)
    value = _loss("ASL", 4, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)(logits, y)
    assert value.item() == pytest.approx(asl_formula(logits, y, gamma_neg, gamma_pos, clip), rel=1e-5)
    if gamma_neg == gamma_pos == clip == 0:  # no focusing, no shift: binary cross-entropy
        assert torch.allclose(value, F.binary_cross_entropy_with_logits(logits, y))


def test_asl_has_finite_gradients_where_the_shifted_probability_is_zero():
    logits = torch.tensor([[-9.0, 20.0, 0.0]], requires_grad=True)
    _loss("ASL", 3, gamma_neg=0.5, clip=0.05)(logits, torch.tensor([[0.0, 1.0, 1.0]])).backward()
    assert torch.isfinite(logits.grad).all()


def test_the_multilabel_losses_fit_the_multilabel_task():
    reg = get_registry()
    assert "multilabel" in reg.get("losses", "ASL").fits.tasks
    assert "multilabel" in reg.get("losses", "BCEWithLogits").fits.tasks
    assert "multilabel" not in reg.get("losses", "CrossEntropy").fits.tasks


# -- metrics ---------------------------------------------------------------------------------------------------------
def average_precision(truth, scores) -> float:
    """AP by its definition (scikit-learn's): the mean, over the positives, of the precision at each one's rank."""
    order = np.argsort(-scores)
    hits = truth[order] == 1
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def f1(truth, pred) -> float:
    tp, fp, fn = (truth & pred).sum(), ((1 - truth) & pred).sum(), (truth & (1 - pred)).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def test_multilabel_metrics_match_their_definitions():
    logits, y = _batch(64, 5, seed=3)
    y[:, 4] = 0  # a class without positives: no AP (NaN), left out of the mean
    probs, truth = torch.sigmoid(logits).numpy(), y.numpy().astype(int)
    ap = np.array([average_precision(truth[:, c], probs[:, c]) for c in range(4)])
    got = {}
    for name in ("map", "per_class_ap", "f1_micro", "f1_macro"):
        m = _metric(name)
        for half in (slice(0, 32), slice(32, 64)):  # two batches, as validation updates them
            m.update(logits[half], y[half])
        got[name] = m.compute()
    assert got["map"].item() == pytest.approx(ap.mean(), abs=1e-5)
    assert np.allclose(got["per_class_ap"][:4].numpy(), ap, atol=1e-5) and torch.isnan(got["per_class_ap"][4])
    pred = (probs >= 0.5).astype(int)
    assert got["f1_micro"].item() == pytest.approx(f1(truth, pred), abs=1e-6)
    assert got["f1_macro"].item() == pytest.approx(np.mean([f1(truth[:, c], pred[:, c]) for c in range(5)]), abs=1e-6)


def test_f1_uses_the_tasks_threshold_unless_it_has_its_own():
    logits = torch.logit(torch.tensor([[0.6, 0.2], [0.3, 0.8]]))
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f1 = get_registry().get("metrics", "f1_micro")
    low = f1.build({}, num_classes=2, task="multilabel", task_params={"threshold": 0.1})
    own = f1.build({"threshold": 0.7}, num_classes=2, task="multilabel", task_params={"threshold": 0.1})
    for m in (low, own):
        m.update(logits, y)
    assert low.compute().item() == pytest.approx(6 / 7)  # all 4 predicted: 3 true, 1 false: 2*3/(2*3+1)
    assert own.compute().item() == pytest.approx(0.5)  # only 0.8: 2*1/(2*1+2)


# -- datasets --------------------------------------------------------------------------------------------------------
def _pngs(root: Path, n: int) -> list[str]:
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def _csv_build(params: dict, on_error: str = "raise"):
    return get_registry().get("datasets", "csv").build({"channels": 1, **params}, seed=0, on_error=on_error)


def test_csv_manifest_with_several_labels_per_row(tmp_path):
    paths = _pngs(tmp_path, 6)
    labels = ["cat|dog", "dog", "", "bird|cat", "cat", "bird"]
    (tmp_path / "m.csv").write_text("path,labels\n" + "".join(f"{p},{lab}\n" for p, lab in
                                                              zip(paths, labels, strict=True)))
    d = _csv_build({"csv": str(tmp_path / "m.csv"), "separator": "|", "val_fraction": 0.5})
    assert d.task == "multilabel" and d.class_names == ["bird", "cat", "dog"]
    everything = {tuple(t.tolist()) for s in (d.train, d.val) for t in s.targets}
    assert everything == {(0, 1, 1), (0, 0, 1), (0, 0, 0), (1, 1, 0), (0, 1, 0), (1, 0, 0)}
    image, target = d.train[0]
    assert image.shape == (8, 8, 1) and target.dtype == np.float32 and target.shape == (3,)

    given = _csv_build({"csv": str(tmp_path / "m.csv"), "separator": "|", "val_csv": str(tmp_path / "m.csv"),
                        "class_names": ["dog", "cat", "bird", "fish"]})
    assert given.class_names == ["dog", "cat", "bird", "fish"] and given.train.targets[0].tolist() == [1, 1, 0, 0]


def test_csv_multilabel_bad_rows_name_their_line(tmp_path):
    paths = _pngs(tmp_path, 3)
    (tmp_path / "m.csv").write_text(f"path,labels\n{paths[0]},cat;dog\n{paths[1]},cat;dgo\n{paths[2]},dog\n")
    with pytest.raises(PlugtrainError, match=r"m\.csv:3: .*unknown class name 'dgo'.*Did you mean 'dog'"):
        _csv_build({"csv": str(tmp_path / "m.csv"), "val_csv": str(tmp_path / "m.csv"),
                    "class_names": ["cat", "dog"]})
    with pytest.raises(PlugtrainError, match=r"m\.csv:1: a multilabel manifest needs a 'labels' column"):
        (tmp_path / "m.csv").write_text(f"path,label\n{paths[0]},cat\n")
        _csv_build({"csv": str(tmp_path / "m.csv"), "task": "multilabel"})
    with pytest.raises(PlugtrainError, match="separator must be a character other than ','"):
        _csv_build({"csv": str(tmp_path / "m.csv"), "separator": ","})


def _shard(path: Path, samples: list[tuple[str, bytes]]) -> None:
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i, (ext, target) in enumerate(samples):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.{ext}", target)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_json_list_targets_are_multi_hot(tmp_path):
    _shard(tmp_path / "train.tar", [("json", b"[0, 2]"), ("json", b"[1]"), ("json", b"[]"), ("json", b"[2]")])
    d = get_registry().get("datasets", "webdataset").build(
        {"shards": str(tmp_path / "train.tar"), "val_shards": str(tmp_path / "train.tar"), "task": "multilabel",
         "channels": 1}, seed=0, on_error="raise")
    assert d.task == "multilabel" and d.class_names == ["0", "1", "2"]
    assert [t.tolist() for t in d.train.targets] == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    _shard(tmp_path / "range.tar", [("json", b"[0, 5]")])
    _shard(tmp_path / "bad.tar", [("json", b"{\"a\": 1}")])
    for shard, message in (("range", r"range\.tar:0000: label 5 out of range: 2 classes"),
                           ("bad", r"bad\.tar:0000: labels .* are not a JSON list of class indices or names")):
        with pytest.raises(PlugtrainError, match=message):
            get_registry().get("datasets", "webdataset").build(
                {"shards": str(tmp_path / f"{shard}.tar"), "val_shards": str(tmp_path / f"{shard}.tar"),
                 "task": "multilabel", "class_names": ["a", "b"]}, seed=0, on_error="raise")


# -- mixup -----------------------------------------------------------------------------------------------------------
def test_mixup_mixes_multi_hot_targets_and_leaves_class_indices_to_timm():
    from plugtrain.plugins.augmentations import mixup

    mix = get_registry().with_role("augmentations", "batch_mix").factory
    images = torch.rand(4, 1, 8, 8)
    hot = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    torch.manual_seed(0)
    np.random.seed(0)
    mixed_images, mixed = mix(num_classes=3, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5,
                              mode="batch", label_smoothing=0.0)(images.clone(), hot)
    lam = float((mixed_images[0] - images[3]).flatten()[0] / (images[0] - images[3]).flatten()[0])
    assert mixed.shape == (4, 3) and torch.allclose(mixed, lam * hot + (1 - lam) * hot.flip(0), atol=1e-5)
    smoothed = mixup(3, mixup_alpha=0.0, cutmix_alpha=0.0, prob=0.0, label_smoothing=0.2)(images.clone(), hot)[1]
    assert torch.allclose(smoothed, hot * 0.8 + 0.1)
    labels = mixup(3, label_smoothing=0.0)(images.clone(), torch.tensor([0, 1, 2, 0]))[1]
    assert labels.shape == (4, 3) and torch.allclose(labels.sum(1), torch.ones(4))


# -- the Fashion-MNIST mosaics ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_mosaics_hold_real_fashion_mnist_items_and_their_labels(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import data_multilabel as dm
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from PIL import Image

    paths = dm.write(tmp_path, train=40, val=10, seed=1)
    hot = dm.read_labels(paths["train"])
    assert hot.shape == (40, 10) and 1 <= hot.sum(1).min() and hot.sum(1).max() <= 4
    images, labels = dm.load_items()
    first = np.asarray(Image.open(tmp_path / "images" / "train-00000.png"))
    cells = [first[r:r + 28, c:c + 28] for r in (0, 28) for c in (0, 28)]
    found = set()
    for cell in cells:
        if cell.any():  # an item: bitwise a Fashion-MNIST image, and its class is a label of the mosaic
            match = np.flatnonzero((images.reshape(len(images), -1) == cell.reshape(-1)).all(axis=1))
            assert len(match) >= 1
            found.add(int(labels[match[0]]))
    assert 2 <= sum(c.any() for c in cells) <= 4
    assert sorted(found) == np.flatnonzero(hot[0]).tolist()
    assert 0.15 < dm.trivial_map(paths["val"]) < 0.45
    assert json.loads(json.dumps(dm.CLASSES)) == dm.CLASSES


def test_shards_of_a_multilabel_manifest_read_back_as_the_same_targets(tmp_path, cli_run):
    paths = _pngs(tmp_path, 6)
    labels = ["cat;dog", "dog", "", "bird;cat", "cat", "bird;cat;dog"]
    (tmp_path / "m.csv").write_text("path,labels\n" + "".join(f"{p},{lab}\n" for p, lab in
                                                              zip(paths, labels, strict=True)))
    spec = tmp_path / "s.toml"
    spec.write_text(f"""[run]\nname = "s"\ntask = "multilabel"\n\n[data]\ndataset = "csv"\ncsv = "{tmp_path}/m.csv"
val_csv = "{tmp_path}/m.csv"\nchannels = 1\n\n[backbone]\nname = "test_efficientnet"\nin_chans = 1\n
[optimizer]\nname = "AdamW"\n""")
    proc = cli_run("shards", spec, "--out", tmp_path / "shards")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "shards" / "plugtrain-shards.json").read_text())
    assert meta["task"] == "multilabel" and meta["class_names"] == ["bird", "cat", "dog"]
    with tarfile.open(next((tmp_path / "shards").glob("train-*.tar"))) as tar:
        assert tar.extractfile("00000000.json").read() == b"[1, 2]"
    shards = get_registry().get("datasets", "webdataset").build({"shards": str(tmp_path / "shards")}, seed=0,
                                                                on_error="raise")
    manifest = _csv_build({"csv": str(tmp_path / "m.csv"), "val_csv": str(tmp_path / "m.csv")})
    assert shards.task == "multilabel" and shards.class_names == manifest.class_names
    for split in ("train", "val"):
        got, want = getattr(shards, split).targets, getattr(manifest, split).targets
        assert [t.tolist() for t in got] == [t.tolist() for t in want]
