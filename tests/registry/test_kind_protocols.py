"""Every component kind has a Protocol (plugtrain.core.hookspecs.CONTRACTS), checked when a component is built.

The built-ins and the example plugin satisfy their kind's contract; a plugin component that lacks a required member
(or has a method that cannot take the runtime's arguments) is refused before the run directory exists, with one
message naming the component, its kind and what is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import warnings

import pytest
import torch
from conftest import tiny_spec
from helpers_plugins import EXAMPLE_PLUGIN_SRC, make_dist

from plugtrain.core import catalog, hookspecs, registry
from plugtrain.core.registry import Registry, get_registry
from plugtrain.core.runtime.build import contract_problem, protocol_problem

#: Parameters for built-ins that have required ones (the rest are built with their defaults).
PARAMS = {
    ("schedulers", "CosineAnnealingWarmRestarts"): {"T_0": 2},
    ("schedulers", "ExponentialLR"): {"gamma": 0.9},
    ("schedulers", "MultiStepLR"): {"milestones": [1]},
    ("schedulers", "StepLR"): {"step_size": 1},
    ("augmentations", "Resize"): {"height": 8, "width": 8},
    ("augmentations", "RandomCrop"): {"height": 8, "width": 8},
    ("augmentations", "RandomResizedCrop"): {"size": [8, 8]},
    ("backbones", "test_efficientnet"): {"in_chans": 1},
    ("backbones", "resnet18"): {"pretrained": False},
}


def _context(kind: str, tmp_path) -> dict:
    model = torch.nn.Linear(4, 3)
    return {
        "backbones": {"num_classes": 3},
        "losses": {"num_classes": 3, "embedding_dim": 3},
        "optimizers": {"params": [{"params": list(model.parameters())}], "model": model},
        "schedulers": {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "epochs": 3, "steps_per_epoch": 2,
                       "total_steps": 6},
        "augmentations": {},
        "loggers": {"run_dir": tmp_path, "spec": {}, "rank": 0},
        "datasets": {"seed": 0, "on_error": "raise", "image_size": 16},
        "metrics": {"num_classes": 3, "task": "classification"},
        "callbacks": {},
        "tasks": {},
    }[kind]


#: The built-ins checked per kind: every one, but for backbones (timm's hundreds: two), loggers that talk to a
#: tracking service, and datasets that need files.
SELECT = {
    "backbones": {"test_efficientnet", "resnet18"},
    "loggers": {"tensorboard", "csv", "console"},
    "datasets": {"sklearn-digits"},
}


def test_every_kind_has_a_contract():
    assert set(hookspecs.CONTRACTS) == set(hookspecs.KINDS)
    for kind, (protocol, required) in hookspecs.CONTRACTS.items():
        members = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
        assert set(required) <= members, kind
        assert protocol.__doc__, kind


@pytest.mark.parametrize("kind", hookspecs.KINDS)
def test_built_ins_satisfy_their_kind(kind, tmp_path):
    built = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for comp in get_registry().components(kind):
            if kind in SELECT and comp.name not in SELECT[kind]:
                continue
            params = PARAMS.get((kind, comp.name), {})
            if any(p.required and p.name not in params for p in comp.params):
                continue  # a composition (needs built children) or a transform without defaults
            try:
                obj = comp.build(params, **_context(kind, tmp_path))
            except ValueError:  # albumentations: a transform whose defaults leave a choice to the user (CropAndPad)
                if kind != "augmentations":
                    raise
                continue
            assert contract_problem(kind, obj) is None, (comp.name, contract_problem(kind, obj))
            if kind == "datasets":
                for split in (obj.train, obj.val, obj.test):
                    assert split is None or protocol_problem(*hookspecs.SPLIT_CONTRACT, split) is None
            if kind == "loggers":
                obj.close()
            built += 1
    assert built >= {"backbones": 2, "loggers": 3, "datasets": 1, "callbacks": 2, "tasks": 3}.get(kind, 5), built


def test_runtime_checkable_protocols_accept_the_built_ins():
    model = get_registry().get("backbones", "test_efficientnet").build({}, num_classes=3)
    assert isinstance(model, hookspecs.Backbone)
    assert isinstance(get_registry().get("augmentations", "HorizontalFlip").build({}), hookspecs.Augmentation)
    digits = get_registry().get("datasets", "sklearn-digits").build({}, seed=0, on_error="raise", image_size=16)
    assert isinstance(digits, hookspecs.Dataset) and isinstance(digits.train, hookspecs.DatasetSplit)


def test_example_plugin_satisfies_its_kinds(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN_SRC))
    plugin = importlib.import_module("plugtrain_example_plugin.plugin")
    for kind in ("backbones", "losses", "loggers"):
        for comp in getattr(plugin, hookspecs.hook_name(kind))():
            obj = comp.build({}, **_context(kind, tmp_path))
            assert contract_problem(kind, obj) is None, (kind, comp.name)


def test_what_a_plugin_may_leave_out_or_vary():
    """Optional members stay optional, and a method may take what the runtime passes in either documented way."""

    class Scheduler:  # step(metrics) (ReduceLROnPlateau-like), no interval, no set_run_mode
        def step(self, metrics): ...
        def state_dict(self): return {}
        def load_state_dict(self, state): ...

    class PlainScheduler(Scheduler):
        def step(self): ...

    assert contract_problem("schedulers", Scheduler()) is None
    assert contract_problem("schedulers", PlainScheduler()) is None
    assert contract_problem("losses", lambda outputs, targets: outputs.sum()) is None
    assert contract_problem("callbacks", object()) is None

    class TwoArgStep(Scheduler):
        def step(self, a, b): ...

    problem = contract_problem("schedulers", TwoArgStep())
    assert problem == "has a step() that cannot be called as step() or step(metrics)"


# -- refused when built, through the real command line ----------------------------------------------------------------
BAD_PLUGIN = """
    import torch
    from plugtrain import Component, hookimpl
    from plugtrain.core.data import DatasetSplits

    class NoCall:  # a "backbone" that has every Module method but forward / __call__
        training = True
        def parameters(self): return iter(())
        def named_parameters(self): return iter(())
        def train(self, mode=True): return self
        def eval(self): return self
        def to(self, device): return self
        def state_dict(self): return {}
        def load_state_dict(self, state): pass

    class NoZeroGrad:
        def __init__(self, params):
            self.param_groups = [{"params": [p for g in params for p in g["params"]], "lr": 0.1}]
        def step(self): pass
        def state_dict(self): return {}
        def load_state_dict(self, state): pass

    class NoStateDict:
        def step(self): pass

    def no_call(in_chans: int = 3):
        return NoCall()

    def one_arg_loss():
        return lambda outputs: outputs.sum()

    def no_zero_grad(params):
        return NoZeroGrad(params)

    def stepper(optimizer):
        return NoStateDict()

    def not_a_transform():
        return {"p": 1.0}

    def unsized(seed: int = 0):
        samples = [(torch.zeros(8, 8, 1, dtype=torch.uint8).numpy(), i % 2) for i in range(8)]
        return DatasetSplits(train=iter(samples), val=samples, class_names=["a", "b"], in_chans=1)

    @hookimpl
    def plugtrain_backbones():
        return [Component("bad-backbone", no_call)]

    @hookimpl
    def plugtrain_losses():
        return [Component("bad-loss", one_arg_loss)]

    @hookimpl
    def plugtrain_optimizers():
        return [Component("bad-optimizer", no_zero_grad)]

    @hookimpl
    def plugtrain_schedulers():
        return [Component("bad-scheduler", stepper)]

    @hookimpl
    def plugtrain_augmentations():
        return [Component("bad-transform", not_a_transform)]

    @hookimpl
    def plugtrain_datasets():
        return [Component("bad-dataset", unsized)]
"""

CASES = {
    "backbone": ('backbone.name="bad-backbone"', "[backbone] backbone 'bad-backbone' (badkinds)",
                 "has no __call__() method", "hookspecs.Backbone"),
    "loss": ('loss.name="bad-loss"', "[loss] loss 'bad-loss' (badkinds)",
             "has a __call__() that cannot be called as __call__(outputs, targets)", "hookspecs.Loss"),
    "optimizer": ('optimizer={name="bad-optimizer"}', "[optimizer] optimizer 'bad-optimizer' (badkinds)",
                  "has no zero_grad() method", "hookspecs.Optimizer"),
    "scheduler": ('scheduler={name="bad-scheduler"}', "[scheduler] scheduler 'bad-scheduler' (badkinds)",
                  "has no state_dict() method", "hookspecs.Scheduler"),
    "augmentation": ('augmentations.train=[{name="bad-transform"}]',
                     "[augmentations.train] augmentation 'bad-transform' (badkinds)",
                     "has no __call__() method", "hookspecs.Augmentation"),
    "dataset": ('data.dataset="bad-dataset"', "[data] dataset 'bad-dataset'",
                "train split (a list_iterator) that has no __len__() method", "hookspecs.DatasetSplit"),
}


@pytest.fixture
def bad_registry(tmp_path, monkeypatch):
    """The process-wide registry: the built-ins plus a plugin whose components each miss a part of their contract."""
    root = make_dist(tmp_path / "plugin", "badkinds-dist", {"badkinds": "pt_badkinds"}, {"pt_badkinds": BAD_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    eps = [ep for ep in importlib.metadata.distribution("plugtrain").entry_points
           if ep.group == hookspecs.ENTRY_POINT_GROUP]
    for dist in importlib.metadata.distributions(path=[str(root)]):
        eps += [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
    monkeypatch.setattr(registry, "_registry", Registry(entry_points=eps, disabled=[], warn=lambda _: None))
    # Spec checks read the component catalog, not the registry: make them ask this one (a catalog an earlier test
    # of this process loaded would not know the plugin), and leave the shared catalog file alone.
    monkeypatch.setattr(catalog, "_catalog", None)
    monkeypatch.setenv(catalog.NO_CATALOG_ENV, "1")
    yield
    sys.modules.pop("pt_badkinds", None)


@pytest.mark.parametrize("case", list(CASES))
def test_a_component_missing_its_contract_is_refused(case, bad_registry, tmp_path, cli_run, one_torch_thread):
    override, *needles = CASES[case]
    spec = tiny_spec(tmp_path, epochs=1, steps=2)
    proc = cli_run("train", spec, "--set", override)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line.startswith("plugtrain: error:") for line in proc.stderr.splitlines()] == [True], proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
