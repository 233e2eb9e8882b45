"""The classes behind the built-in losses, optimizers, schedulers and metrics are real module-level classes.

Each is importable from its own module, the registry's factory builds an instance of exactly that class, it pickles
(a class defined inside a function does not), its ``state_dict`` keeps the layout of existing checkpoints, and it can
be subclassed. Importing the plugin modules themselves still imports neither torch nor these class modules.
"""

from __future__ import annotations

import importlib
import json
import pickle

import pytest
import torch
from helpers_plugins import run_python

from plugtrain.core.registry import get_registry
from plugtrain.plugins.optimizers import _build

MODEL_CONTEXT = {"num_classes": 4, "embedding_dim": 8}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _build_loss(name: str, params: dict):
    return get_registry().get("losses", name).build(params, **MODEL_CONTEXT)


def _build_metric(name: str, params: dict):
    return get_registry().get("metrics", name).build(params, num_classes=4, task="classification")


def _build_optimizer(name: str, params: dict):
    model = _model()
    return _build(get_registry().get("optimizers", name), params, params=model.parameters(), model=model)


def _build_scheduler(name: str, params: dict):
    comp = get_registry().get("schedulers", name)
    return _build(comp, params, optimizer=_optimizer(_model()), epochs=3, steps_per_epoch=5, total_steps=15)


BUILDERS = {"losses": _build_loss, "metrics": _build_metric, "optimizers": _build_optimizer,
            "schedulers": _build_scheduler}

#: (kind, registered name, its parameters, module, class)
CASES = [
    ("losses", "CrossEntropy", {"weight": [1.0, 2.0, 1.0, 1.0]}, "loss_modules", "CrossEntropy"),
    ("losses", "LabelSmoothing", {}, "loss_modules", "CrossEntropy"),
    ("losses", "KLDiv", {}, "loss_modules", "KLDiv"),
    ("losses", "BCEWithLogits", {"pos_weight": [1.0, 2.0, 1.0, 1.0]}, "loss_modules", "BCEWithLogits"),
    ("losses", "MSE", {}, "loss_modules", "Regression"),
    ("losses", "Huber", {}, "loss_modules", "Regression"),
    ("losses", "SupCon", {}, "loss_modules", "MetricLearning"),
    ("losses", "ArcFace", {}, "loss_modules", "MetricLearning"),
    ("optimizers", "SAM", {"base": "SGD", "lr": 0.1}, "optimizer_classes", "SAM"),
    ("optimizers", "LookAhead", {"base": "AdamW", "lr": 0.01}, "optimizer_classes", "Lookahead"),
    ("schedulers", "OneCycleLR", {}, "scheduler_classes", "OneCycleLR"),
    ("schedulers", "ReduceLROnPlateau", {}, "scheduler_classes", "ReduceLROnPlateau"),
    ("metrics", "precision_at_1", {}, "metric_classes", "RetrievalMetric"),
    ("metrics", "map_at_r", {}, "metric_classes", "RetrievalMetric"),
    ("metrics", "confusion_matrix", {}, "metric_classes", "ConfusionMatrix"),
    ("metrics", "parity_plot", {}, "metric_classes", "ParityPlot"),
    ("metrics", "embeddings", {}, "metric_classes", "Embeddings"),
]


@pytest.mark.parametrize(("kind", "name", "params", "module", "cls"), CASES, ids=[c[1] for c in CASES])
def test_the_registry_builds_exactly_the_importable_class(kind, name, params, module, cls):
    klass = getattr(importlib.import_module(f"plugtrain.plugins.{module}"), cls)
    assert "<locals>" not in klass.__qualname__ and klass.__module__ == f"plugtrain.plugins.{module}"
    assert type(BUILDERS[kind](name, params)) is klass


@pytest.mark.parametrize(("kind", "name", "params"), [c[:3] for c in CASES if c[0] in ("losses", "metrics")],
                         ids=[c[1] for c in CASES if c[0] in ("losses", "metrics")])
def test_losses_and_metrics_pickle(kind, name, params):
    obj = BUILDERS[kind](name, params)
    copy = pickle.loads(pickle.dumps(obj))
    assert type(copy) is type(obj)
    assert copy.state_dict().keys() == obj.state_dict().keys()
    for key, value in obj.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)


def test_state_dict_layouts_are_those_of_existing_checkpoints():
    assert list(_build_loss("CrossEntropy", {"weight": [1.0, 2.0, 1.0, 1.0]}).state_dict()) == ["weight"]
    assert list(_build_loss("BCEWithLogits", {"pos_weight": [1.0, 2.0, 1.0, 1.0]}).state_dict()) == ["pos_weight"]
    assert list(_build_loss("ArcFace", {}).state_dict()) == ["loss.W"]
    assert list(_build_loss("MSE", {}).state_dict()) == []
    assert list(_build_optimizer("SAM", {"base": "SGD", "lr": 0.1}).state_dict()) == ["sam_base"]

    model = _model()
    opt = _build(get_registry().get("optimizers", "LookAhead"), {"base": "AdamW", "lr": 0.01, "k": 2},
                 params=model.parameters(), model=model)
    model(torch.ones(2, 8)).sum().backward()
    opt.step()
    slow = opt.state_dict()["lookahead_state"]
    assert slow and all(isinstance(key, str) and key.count(".") == 1 for key in slow)


def test_a_sam_subclass_trains_like_the_registry_sam():
    """A subclass of the importable SAM adds behaviour (it counts its steps) and takes the same steps as the SAM
    that the registry builds."""
    from plugtrain.plugins.optimizer_classes import SAM

    class CountingSAM(SAM):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.second_steps = 0

        def second_step(self, zero_grad: bool = False) -> None:
            self.second_steps += 1
            super().second_step(zero_grad)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    mine, theirs = _model(), _model()
    opts = [CountingSAM(mine.parameters(), torch.optim.SGD, rho=0.05, lr=0.1),
            _build(get_registry().get("optimizers", "SAM"), {"base": "SGD", "lr": 0.1, "rho": 0.05},
                   params=theirs.parameters(), model=theirs)]
    for _ in range(3):
        for model, opt in zip((mine, theirs), opts, strict=True):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
    assert opts[0].second_steps == 3
    assert isinstance(opts[0], SAM) and repr(opts[0]).startswith("SAM(base=SGD")
    for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opts[0].state_dict().keys() == opts[1].state_dict().keys() == {"sam_base"}


def test_importing_the_plugin_modules_imports_no_class_module_and_no_torch():
    proc = run_python(
        """
        import json, sys
        import plugtrain.plugins.losses, plugtrain.plugins.optimizers
        import plugtrain.plugins.schedulers, plugtrain.plugins.metrics
        heavy = ("torch", "torchmetrics", "pytorch_optimizer", "pytorch_metric_learning", "PIL", "numpy")
        mods = [f"plugtrain.plugins.{m}" for m in ("loss_modules", "optimizer_classes", "scheduler_classes",
                                                   "metric_classes")]
        print(json.dumps(sorted(m for m in (*heavy, *mods) if m in sys.modules)))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
