"""The loss catalog: every loss lowers itself on a small fixed problem; soft targets, squeezing, loss parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry, reset_registry

CLASSIFICATION = ["CrossEntropy", "LabelSmoothing", "KLDiv", "BCEWithLogits"]
REGRESSION = ["MSE", "L1", "SmoothL1", "Huber"]
METRIC_LEARNING = ["SupCon", "TripletMargin", "ArcFace", "SubCenterArcFace", "CosFace"]
NUM_CLASSES, EMB = 4, 16


def loss(name: str, **params):
    comp = get_registry().get("losses", name)
    return comp.build(params, num_classes=NUM_CLASSES, embedding_dim=EMB)


def test_every_loss_is_listed_with_a_summary():
    reset_registry()
    comps = {c.name: c for c in get_registry().components("losses")}
    for name in CLASSIFICATION + REGRESSION + METRIC_LEARNING:
        assert name in comps and comps[name].one_line, name
        assert not {"num_classes", "embedding_dim"} & {p.name for p in comps[name].params}


def classification_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x @ torch.randn(8, NUM_CLASSES, generator=g)).argmax(1)
    return x, y


def fit(model: torch.nn.Module, criterion: torch.nn.Module, x, y, steps: int = 40, lr: float = 0.05):
    params = list(model.parameters()) + list(criterion.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        start = float(criterion(model(x), y))
    for _ in range(steps):
        opt.zero_grad()
        value = criterion(model(x), y)
        assert value.ndim == 0
        value.backward()
        opt.step()
    with torch.no_grad():
        end = float(criterion(model(x), y))
    return start, end


@pytest.mark.parametrize("name", CLASSIFICATION)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "soft"])
def test_classification_loss_goes_down(name, soft):
    x, y = classification_data()
    if soft:  # mixup-style targets: a mix of two one-hot rows
        lam = 0.7
        onehot = F.one_hot(y, NUM_CLASSES).float()
        y = lam * onehot + (1 - lam) * onehot.roll(1, dims=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, NUM_CLASSES))
    start, end = fit(model, loss(name), x, y)
    assert end < 0.7 * start, f"{name}: {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_one_hot_soft_targets_give_the_same_loss_as_indices(name):
    torch.manual_seed(0)
    logits = torch.randn(16, NUM_CLASSES)
    y = torch.randint(0, NUM_CLASSES, (16,))
    criterion = loss(name)
    assert torch.allclose(criterion(logits, y), criterion(logits, F.one_hot(y, NUM_CLASSES).float()), atol=1e-6)


def test_classification_losses_match_their_formulas():
    torch.manual_seed(0)
    logits, y = torch.randn(16, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (16,))
    assert torch.allclose(loss("CrossEntropy")(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(loss("LabelSmoothing")(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    smoothed = F.one_hot(y, NUM_CLASSES).float() * 0.9 + 0.1 / NUM_CLASSES
    expected = (smoothed * (smoothed.log() - F.log_softmax(logits, 1))).sum(1).mean()
    assert torch.allclose(loss("KLDiv", label_smoothing=0.1)(logits, y), expected, atol=1e-6)
    onehot = F.one_hot(y, NUM_CLASSES).float()
    assert torch.allclose(loss("BCEWithLogits")(logits, y), F.binary_cross_entropy_with_logits(logits, onehot))
    # binary: one logit per sample and 0/1 targets
    one = torch.randn(16, 1)
    t = torch.randint(0, 2, (16,))
    assert torch.allclose(loss("BCEWithLogits")(one, t), F.binary_cross_entropy_with_logits(one[:, 0], t.float()))
    # bf16 outputs (outside autocast) still work, computed in float32
    assert loss("CrossEntropy")(logits.bfloat16(), y).dtype == torch.float32


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_loss_goes_down_and_squeezes(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = x @ torch.randn(8, generator=g) * 3.0 + 1.0
    criterion = loss(name)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)  # (N, 1) outputs against (N,) targets
    with torch.no_grad():
        out = model(x)
    reference = {"MSE": F.mse_loss, "L1": F.l1_loss, "SmoothL1": F.smooth_l1_loss, "Huber": F.huber_loss}[name]
    assert torch.allclose(criterion(out, y), reference(out[:, 0], y))  # no (N, N) broadcasting
    start, end = fit(model, criterion, x, y, steps=60, lr=0.1)
    assert end < 0.7 * start, f"{name}: {start:.4f} -> {end:.4f}"


def embedding_data():
    """Four classes, clustered in input space but mixed up by a random projection to start with."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(NUM_CLASSES, 8, generator=g) * 2.0
    y = torch.arange(NUM_CLASSES).repeat(16)
    x = centers[y] + 0.5 * torch.randn(len(y), 8, generator=g)
    return x, y


class Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, EMB))

    def forward(self, x):
        return F.normalize(self.net(x), dim=1)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("SupCon", {}),
        ("TripletMargin", {"margin": 0.2}),
        ("TripletMargin", {"margin": 0.2, "miner": "semihard"}),
        ("ArcFace", {}),
        ("SubCenterArcFace", {}),
        ("CosFace", {}),
    ],
    ids=["SupCon", "TripletMargin", "TripletMargin-semihard", "ArcFace", "SubCenterArcFace", "CosFace"],
)
def test_metric_learning_loss_goes_down(name, params):
    x, y = embedding_data()
    torch.manual_seed(0)
    model = Embedder()
    criterion = loss(name, **params)
    owned = [p.detach().clone() for p in criterion.parameters()]
    start, end = fit(model, criterion, x, y, steps=40, lr=0.01)
    if name == "SupCon":
        # bounded below by log(positives per anchor) = log(15): measure the progress towards it
        floor = torch.log(torch.tensor(15.0)).item()
        assert end - floor < 0.3 * (start - floor), f"{name}: {start:.4f} -> {end:.4f} (floor {floor:.4f})"
    else:
        assert end < 0.7 * start, f"{name}: {start:.4f} -> {end:.4f}"
    if name in ("ArcFace", "SubCenterArcFace", "CosFace"):
        assert owned, f"{name} should own its class centres"
        after = list(criterion.parameters())
        assert any(not torch.equal(a.detach(), b) for a, b in zip(after, owned, strict=True)), "centres not trained"
    else:
        assert not owned


def test_class_centre_losses_have_their_shapes_and_need_context():
    assert [tuple(p.shape) for p in loss("ArcFace").parameters()] == [(EMB, NUM_CLASSES)]
    assert [tuple(p.shape) for p in loss("SubCenterArcFace", sub_centers=2).parameters()] == [(EMB, 2 * NUM_CLASSES)]
    comp = get_registry().get("losses", "CosFace")
    with pytest.raises(PlugtrainError, match="CosFace needs the number of classes and the embedding width"):
        comp.build({}, num_classes=0, embedding_dim=EMB)


def test_metric_learning_losses_refuse_soft_targets():
    e = F.normalize(torch.randn(8, EMB), dim=1)
    soft = torch.softmax(torch.randn(8, NUM_CLASSES), 1)
    with pytest.raises(ValueError, match="integer class labels.*mixup"):
        loss("SupCon")(e, soft)
    with pytest.raises(ValueError, match=r"embeddings of shape \(N, D\)"):
        loss("ArcFace")(torch.randn(8, 2, 2), torch.zeros(8, dtype=torch.long))


def test_supcon_with_two_views_prefers_matching_views():
    """Two views of each sample stacked along the batch (labels repeated): aligned views give a lower loss."""
    torch.manual_seed(0)
    base = F.normalize(torch.randn(8, EMB), dim=1)
    labels = torch.arange(8).repeat(2)
    aligned = torch.cat([base, F.normalize(base + 0.01 * torch.randn_like(base), dim=1)])
    shuffled = torch.cat([base, base[torch.randperm(8)]])
    criterion = loss("SupCon")
    assert float(criterion(aligned, labels)) < float(criterion(shuffled, labels))


@pytest.mark.parametrize("name", METRIC_LEARNING)
def test_metric_learning_losses_compute_in_float32_under_bf16_autocast(name):
    torch.manual_seed(0)
    e = F.normalize(torch.randn(16, EMB), dim=1).requires_grad_(True)
    y = torch.arange(4).repeat(4)
    criterion = loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = criterion(e.bfloat16(), y)
    assert value.dtype == torch.float32
    with torch.no_grad():
        reference = criterion(e.bfloat16().float(), y)
    assert torch.allclose(value.detach(), reference)
    value.backward()
    assert torch.isfinite(e.grad).all()
