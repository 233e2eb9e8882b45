"""Class imbalance (issue 25, item 2) on a deliberately imbalanced subset of real Fashion-MNIST (Debian's
``dataset-fashion-mnist``): ``data.sampler = "weighted"`` draws every class about equally often, is rank-aware and
resumes to the same order; ``loss.weight = "balanced"`` is computed from the train split's counts and recorded in
the run's spec.toml; the start line and the dry run show the counts; ``check`` refuses bad values.

Measured on this setup (4 classes, train 480/160/48/16, balanced val 4 x 100, test_efficientnet at 16 px, 3
epochs, batch 32, seed 0, on CPU): balanced accuracy 0.83 with the random sampler, 0.93 with the weighted sampler,
0.88 with the balanced loss weights.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tomllib
from conftest import cli

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [0, 1, 2, 7]  # T-shirt/top, Trouser, Pullover, Sneaker
NAMES = ["tshirt", "trouser", "pullover", "sneaker"]
TRAIN_COUNTS = [480, 160, 48, 16]  # 30 : 10 : 3 : 1
VAL_PER_CLASS = 100

pytestmark = pytest.mark.skipif(not (FASHION / "train-labels-idx1-ubyte.gz").exists(),
                                reason="Debian's dataset-fashion-mnist is not installed")


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_idx(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(head + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> dict:
    """Raw IDX files of the imbalanced subset (labels 0..3) and the balanced validation images."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    out = {}
    for split, src, counts in (("train", "train", TRAIN_COUNTS), ("t10k", "t10k", [VAL_PER_CLASS] * 4)):
        images = _read_idx(FASHION / f"{src}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION / f"{src}-labels-idx1-ubyte.gz")
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                              for c, n in zip(CLASSES, counts, strict=True)])
        idx = rng.permutation(idx)
        new_labels = np.array([CLASSES.index(int(c)) for c in labels[idx]], dtype=np.uint8)
        _write_idx(root / f"{split}-images-idx3-ubyte", images[idx])
        _write_idx(root / f"{split}-labels-idx1-ubyte", new_labels)
        out[split] = (images[idx], new_labels)
    out["root"] = root
    return out


def _spec(path: Path, root: Path, name: str, data: str = "", loss: str = "", epochs: int = 3) -> Path:
    path.write_text(f"""
[run]
name = "{name}"
output_dir = "{(path.parent / 'runs').as_posix()}"
epochs = {epochs}
[data]
dataset = "idx"
root = "{root.as_posix()}"
val_split = "test"
class_names = {json.dumps(NAMES)}
image_size = 16
batch_size = 32
num_workers = 0
{data}
[backbone]
name = "test_efficientnet"
in_chans = 1
[loss]
name = "CrossEntropy"
{loss}
[optimizer]
name = "AdamW"
lr = 3e-3
[augmentations]
train = [{{ name = "HorizontalFlip", p = 0.5 }}]
[[loggers]]
name = "csv"
""", encoding="utf-8")
    return path


def _built(spec_path: Path, rank: int = 0, world: int = 1):
    import torch

    from plugtrain.core.runtime import build, distributed
    from plugtrain.core.spec.loader import load_spec

    dist = distributed.DistEnv(device=torch.device("cpu"), rank=rank, world_size=world)
    built = build.build_run(load_spec(str(spec_path)), dist, purpose="eval")
    return built, build.train_sampler(built, dist)


def _targets(built) -> list[int]:
    return [int(built.train_data.split.targets[built.train_data.indices[i]]) if built.train_data.indices is not None
            else int(built.train_data.split.targets[i]) for i in range(len(built.train_data))]


def test_weighted_sampler_equalises_classes_is_rank_aware_and_resumes_exactly(fmnist, tmp_path):
    spec = _spec(tmp_path / "w.toml", fmnist["root"], "w", data='sampler = "weighted"')
    built, sampler = _built(spec)
    targets = _targets(built)
    assert Counter(targets) == dict(enumerate(TRAIN_COUNTS))
    assert built.class_counts == TRAIN_COUNTS
    drawn = Counter()
    for e in range(5):
        sampler.set_epoch(e)
        drawn.update(targets[i] for batch in sampler for _, i in batch)
    total = sum(drawn.values())
    shares = [drawn[c] / total for c in range(4)]
    assert all(abs(s - 0.25) < 0.04 for s in shares), shares  # the raw shares are 0.68 / 0.23 / 0.07 / 0.02

    # given class weights: each class drawn as often as its share of the weights
    spec2 = _spec(tmp_path / "w2.toml", fmnist["root"], "w2", data='sampler = "weighted"\nclass_weights = [0, 1, 1, 2]')
    built2, sampler2 = _built(spec2)
    sampler2.set_epoch(0)
    c2 = Counter(targets[i] for batch in sampler2 for _, i in batch)
    assert c2[0] == 0 and 1.5 < c2[3] / c2[1] < 2.6, c2

    # two ranks: each its share of the same global batches, together the one-process order
    one = [b for b in (sampler.set_epoch(3) or sampler)]
    ranks = []
    for r in range(2):
        b2, s2 = _built(spec, rank=r, world=2)
        s2.batch_size = 16  # the same global batch (32) over two processes
        s2.set_epoch(3)
        ranks.append(list(s2))
    assert [r0 + r1 for r0, r1 in zip(*ranks, strict=True)] == one[:len(ranks[0])]

    # a resume at batch k of epoch 2, in a freshly built run: the remaining batches are those of the uninterrupted
    sampler.set_epoch(2)
    whole = list(sampler)
    fresh, s3 = _built(spec)
    s3.set_epoch(2, start_batch=5)
    assert list(s3) == whole[5:]


def _balanced_accuracy(run_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    from plugtrain.api import load_run

    model = load_run(run_dir, "last")
    pred = model.outputs([im[..., None] for im in images]).argmax(1).numpy()
    return float(np.mean([np.mean(pred[labels == c] == c) for c in range(4)]))


@pytest.mark.slow
def test_weighted_sampler_raises_balanced_accuracy(fmnist, tmp_path, capfd):
    """Trains two tiny runs (random and weighted sampler) on the imbalanced subset and measures balanced accuracy on
    the balanced validation set. (The balanced loss weights, measured the same way, gave 0.88 against 0.83: not
    asserted here, to keep the test short.)"""
    images, labels = fmnist["t10k"]
    scores = {}
    for name, data, loss in (("plain", "", ""), ("weighted", 'sampler = "weighted"', "")):
        spec = _spec(tmp_path / f"{name}.toml", fmnist["root"], name, data=data, loss=loss)
        capfd.readouterr()
        assert cli("train", spec) == 0
        out = capfd.readouterr().out
        assert "train samples per class: tshirt 480, trouser 160, pullover 48, sneaker 16 (max/min 30.0)" in out
        scores[name] = _balanced_accuracy(tmp_path / "runs" / name, images, labels)
    print("balanced accuracy:", scores)
    assert scores["weighted"] > scores["plain"] + 0.05, scores


def test_dry_run_shows_class_counts_and_check_refuses_bad_values(fmnist, tmp_path, cli_run):
    spec = _spec(tmp_path / "d.toml", fmnist["root"], "d", data='sampler = "weighted"', loss='weight = "balanced"')
    r = cli_run("train", spec, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "train samples per class: tshirt 480, trouser 160, pullover 48, sneaker 16" in r.stdout
    assert "sampler weighted (1/count)" in r.stdout
    assert "loss weight 0.366667, 1.1, 3.66667, 11" in r.stdout  # n / (classes x count)

    r = cli_run("check", spec, "--set", 'run.task="regression"')
    assert r.returncode == 2 and 'sampler = "weighted" draws by class; a regression run has no classes' in r.stderr
    for name, command, data, loss, message in [
        ("b1", "check", 'sampler = "weigthed"', "", "weighted"),
        ("b2", "check", "", 'weight = "balance"', "balanced"),
        ("b3", "train", 'sampler = "weighted"\nclass_weights = [1, 2]', "",
         "class_weights has 2 values but the dataset has 4 classes"),
        ("b4", "train", "", "weight = [1.0, 2.0, 3.0]", "[loss] weight has 3 values but the dataset has 4 classes"),
        ("b5", "check", "class_weights = [1, 1, 1, 1]", "", "sampler"),
        ("b6", "check", 'sampler = "weighted"\nclass_weights = [1, -1, 1, 1]', "", "class_weights"),
    ]:
        r = cli_run(command, _spec(tmp_path / f"{name}.toml", fmnist["root"], name, data=data, loss=loss))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
        assert not (tmp_path / "runs" / name).exists()


def test_a_balanced_loss_run_resumes_with_the_same_spec(tmp_path, cli_run):
    """spec.toml records the numbers "balanced" resolved to; resuming with the spec that says "balanced" is the same
    training, not a changed spec."""
    from conftest import tiny_spec

    spec = tiny_spec(tmp_path, name="bal", epochs=1, steps=2, batch_size=8)
    spec.write_text(spec.read_text().replace('name = "CrossEntropy"', 'name = "CrossEntropy"\nweight = "balanced"'))
    r = cli_run("train", spec)
    assert r.returncode == 0, r.stderr
    weight = tomllib.loads((tmp_path / "runs" / "bal" / "spec.toml").read_text())["loss"]["weight"]
    counts = [142, 146, 142, 146, 145, 146, 145, 143, 139, 144]  # the digits train split's classes
    assert weight == pytest.approx([sum(counts) / (10 * c) for c in counts], abs=1e-6)
    r = cli_run("train", spec, "--resume", "auto", "--set", "run.epochs=2")
    assert r.returncode == 0, r.stderr
    assert "epoch 2" in r.stdout or "(epoch 2)" in r.stdout, r.stdout
