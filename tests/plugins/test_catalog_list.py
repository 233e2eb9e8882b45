"""``plugtrain list --json`` holds every component issue 5 names; ``plugtrain show`` gives their parameters."""

from __future__ import annotations

import pytest
from helpers_plugins import json_out, run_plugtrain

CATALOG = {
    "backbones": ["resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224"],
    "losses": ["CrossEntropy", "LabelSmoothing", "KLDiv", "SupCon", "ArcFace", "SubCenterArcFace", "CosFace",
               "TripletMargin", "BCEWithLogits", "MSE", "L1", "SmoothL1", "Huber"],
    "optimizers": ["SGD", "Adam", "AdamW", "RAdam", "RMSprop", "Madgrad", "LookAhead", "Ranger", "SAM", "NAdam",
                   "Adagrad", "Adadelta", "Adamax", "ASGD", "Rprop", "Adafactor"],
    "schedulers": ["ReduceLROnPlateau", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
                   "ExponentialLR", "StepLR", "MultiStepLR", "OneCycleLR", "LinearLR", "ConstantLR", "PolynomialLR"],
    "metrics": ["accuracy", "top5", "f1_macro", "mae", "rmse", "r2", "precision_at_1", "recall_at_1", "map_at_r"],
    "callbacks": ["early-stopping", "unfreeze"],
}


@pytest.fixture(scope="module")
def listing() -> dict[str, set[str]]:
    rows = json_out(run_plugtrain("list", "--json"))
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row["kind"], set()).add(row["name"])
    return out


def test_list_json_holds_every_catalog_name(listing):
    for kind, names in CATALOG.items():
        missing = set(names) - listing.get(kind, set())
        assert not missing, f"{kind}: missing {sorted(missing)}"
    assert len(listing["backbones"]) > 1000  # every timm model
    assert not {"LBFGS", "SparseAdam", "Muon"} & listing["optimizers"]


@pytest.mark.parametrize(
    ("kind", "name", "expected", "hidden"),
    [
        ("backbones", "resnet18", {"global_pool", "gem_p", "gem_eps", "embedding_dim", "pretrained", "freeze",
                                   "unfreeze_after_epochs", "in_chans", "drop_rate", "drop_path_rate"},
         {"num_classes"}),
        ("optimizers", "SAM", {"base", "rho", "adaptive", "lr", "base_params"}, {"params", "model"}),
        ("optimizers", "LookAhead", {"base", "k", "alpha", "base_params"}, {"params", "model"}),
        ("schedulers", "OneCycleLR", {"max_lr", "pct_start"}, {"optimizer", "total_steps"}),
        ("losses", "ArcFace", {"margin", "scale"}, {"num_classes", "embedding_dim"}),
    ],
)
def test_show_gives_the_parameters_and_hides_context(kind, name, expected, hidden):
    shown = json_out(run_plugtrain("show", kind, name, "--json"))
    params = {p["name"] for p in shown["params"]}
    assert expected <= params
    assert not hidden & params
