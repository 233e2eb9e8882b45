"""Roles: core finds "the component that does X" by the role it claims, never by its name.

Registries here load the installed built-ins through their real entry points, plus plugin packages written to a temp
dir (see ``helpers_plugins``).
"""

from __future__ import annotations

import importlib.metadata

import pytest
from helpers_plugins import make_dist

from plugtrain.core import hookspecs
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import Component, Registry, get_registry

ROLE_PLUGIN = """
    from plugtrain import Component, hookimpl

    def other_resize(height: int, width: int):
        return ("resize", height, width)

    def other_ema(model, decay: float = 0.5):
        return ("ema", model, decay)

    @hookimpl
    def plugtrain_augmentations():
        return [Component("other-resize", other_resize, roles="resize")]

    @hookimpl
    def plugtrain_callbacks():
        return [Component("other-ema", other_ema, roles=("ema",))]
"""


def _registry(tmp_path, monkeypatch, builtins: bool = True) -> Registry:
    make_dist(tmp_path, "roles-dist", {"roles": "pt_roles"}, {"pt_roles": ROLE_PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [ep for ep in importlib.metadata.distribution("plugtrain").entry_points
           if ep.group == hookspecs.ENTRY_POINT_GROUP] if builtins else []
    for dist in importlib.metadata.distributions(path=[str(tmp_path)]):
        eps += [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
    return Registry(entry_points=eps, disabled=[], warn=lambda _: None)


def test_roles_of_the_built_ins():
    reg = get_registry()
    assert reg.with_role("augmentations", "resize").name == "Resize"
    assert reg.with_role("augmentations", "compose").name == "Compose"
    assert reg.with_role("loggers", "metrics_csv").name == "csv"
    assert [c.name for c in reg.role_components("loggers", "default")] == ["tensorboard", "csv", "console"]
    assert [c.name for c in reg.role_components("metrics", "default:regression")] == ["mae", "rmse", "r2",
                                                                                       "parity_plot"]
    assert [c.name for c in reg.role_components("metrics", "always:classification")] == ["accuracy"]
    for kind, role in hookspecs.ROLES:
        assert reg.role_components(kind, role) or role == "always:regression" or role == "always:metric_learning", role


def test_runtime_only_components_are_found_by_role_only():
    reg = get_registry()
    mix = reg.with_role("augmentations", "batch_mix")
    ema = reg.with_role("callbacks", "ema")
    assert mix.runtime_only and ema.runtime_only
    assert mix.name not in reg.names("augmentations") and ema.name not in reg.names("callbacks")
    assert all(not c.runtime_only for c in reg.all_components())
    with pytest.raises(PlugtrainError, match=r"is the implementation of \[mixup\]: a part of the runtime"):
        reg.get("augmentations", mix.name)


def test_batch_mix_and_ema_build_what_the_runtime_uses():
    torch = pytest.importorskip("torch")
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    from plugtrain.core.runtime.build import build_ema

    mix = get_registry().with_role("augmentations", "batch_mix").factory(
        num_classes=10, mixup_alpha=0.4, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
        label_smoothing=0.1)
    assert isinstance(mix, Mixup) and mix.mixup_alpha == 0.4 and mix.num_classes == 10
    model = torch.nn.Linear(3, 2)
    ema = build_ema(model, 0.9)
    assert isinstance(ema, ModelEmaV3) and ema.decay == 0.9
    ema.update(model, step=1)
    ema.load_state_dict(ema.state_dict())
    assert isinstance(ema.module, torch.nn.Linear)


def test_two_claimants_of_a_role_are_an_error_naming_both(tmp_path, monkeypatch):
    reg = _registry(tmp_path, monkeypatch)
    with pytest.raises(PlugtrainError) as info:
        reg.with_role("augmentations", "resize")
    msg = str(info.value)
    assert "'Resize' of plugin 'augmentations'" in msg and "'other-resize' of plugin 'roles' (roles-dist==1.0)" in msg
    assert "PLUGTRAIN_DISABLE_PLUGINS" in msg and "\n" not in msg
    with pytest.raises(PlugtrainError, match="'timm-ema' of plugin 'callbacks'.*'other-ema' of plugin 'roles'"):
        reg.with_role("callbacks", "ema")


def test_a_third_party_claimant_alone_is_used(tmp_path, monkeypatch):
    reg = _registry(tmp_path, monkeypatch, builtins=False)
    assert reg.with_role("augmentations", "resize").factory(height=2, width=3) == ("resize", 2, 3)
    assert reg.with_role("callbacks", "ema").build(model="m") == ("ema", "m", 0.5)
    assert reg.names("callbacks") == []  # runtime-only: not listed


def test_no_claimant_is_an_error_or_none():
    reg = Registry(entry_points=[])
    with pytest.raises(PlugtrainError, match=r"no augmentation has the role 'resize' \(the transform that resizes"):
        reg.with_role("augmentations", "resize")
    assert reg.with_role("loggers", "metrics_csv", required=False) is None
    assert reg.role_components("loggers", "default") == []


def test_roles_are_a_set_of_strings():
    assert Component("x", print, roles="resize").roles == frozenset({"resize"})
    assert Component("x", print, roles=["a", "b"]).roles == frozenset({"a", "b"})
    assert Component("x", print).roles == frozenset()
