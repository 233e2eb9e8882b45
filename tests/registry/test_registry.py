"""The registry's Python API: loading real entry points, error isolation, lookup, parameters, lazy imports.

Entry points here are real: they are read by ``importlib.metadata`` from ``*.dist-info`` folders that the tests lay
out on a temporary path (see ``helpers_plugins``), together with the built-in ones of the installed plugtrain.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Literal

import pytest
from helpers_plugins import build_plugin_dists, make_dist, run_python

from plugtrain.core import hookspecs
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import (
    Component,
    Param,
    PluginInfo,
    Registry,
    check_kind,
    get_registry,
    reset_registry,
    signature_params,
)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, list[Path]]:
    return build_plugin_dists(tmp_path_factory.mktemp("plugins"))


@pytest.fixture
def registry(dists, monkeypatch):
    """``registry(*plugin_names, **kwargs)``: a Registry of the built-ins plus those test plugins' entry points."""
    monkeypatch.delenv("PLUGTRAIN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("PLUGTRAIN_STRICT_PLUGINS", raising=False)

    def make(*names: str, **kwargs) -> tuple[Registry, list[str]]:
        paths = [p for name in names for p in dists[name]]
        for p in paths:
            monkeypatch.syspath_prepend(str(p))
        warnings: list[str] = []
        eps = [ep for ep in importlib.metadata.distribution("plugtrain").entry_points
               if ep.group == hookspecs.ENTRY_POINT_GROUP]
        eps += entry_points_at(paths)
        kwargs.setdefault("warn", warnings.append)
        return Registry(entry_points=eps, **kwargs), warnings

    return make


def entry_points_at(paths: list[Path]) -> list[importlib.metadata.EntryPoint]:
    """The ``plugtrain`` entry points of the distributions installed under ``paths`` (each with its ``dist``)."""
    eps = []
    for dist in importlib.metadata.distributions(path=[str(p) for p in paths]):
        eps += [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
    return eps


# -- hook specs --------------------------------------------------------------------------------------------------------


def test_one_documented_hook_per_kind():
    assert hookspecs.KINDS == ("backbones", "losses", "optimizers", "schedulers", "augmentations", "loggers",
                               "datasets", "metrics", "callbacks", "tasks")
    assert set(hookspecs.CONTEXT) == set(hookspecs.KINDS)
    for kind in hookspecs.KINDS:
        spec = getattr(hookspecs, hookspecs.hook_name(kind))
        assert "Called:" in spec.__doc__ and "Returns:" in spec.__doc__
    reg = Registry(entry_points=[])
    for kind in hookspecs.KINDS:
        assert hasattr(reg.pm.hook, f"plugtrain_{kind}")
        assert reg.components(kind) == []


def test_check_kind_accepts_plural_and_singular_and_suggests():
    assert check_kind("losses") == "losses"
    assert check_kind("loss") == "losses"
    assert check_kind("backbone") == "backbones"
    with pytest.raises(PlugtrainError, match=r"unknown component kind 'bakbones'\. Did you mean 'backbones'\?"):
        check_kind("bakbones")


# -- loading ----------------------------------------------------------------------------------------------------------


def test_builtins_load_through_entry_points_as_plugins(registry):
    reg, warnings = registry()
    assert warnings == []
    builtins = {p.name: p for p in reg.plugins if p.distribution == "plugtrain"}
    # one plugin per component kind, plus `sweep`: the built-in commands a plugin could add just the same
    assert set(builtins) == {*hookspecs.KINDS, "sweep"}
    for name, info in builtins.items():
        assert isinstance(info, PluginInfo)
        hook = hookspecs.COMMANDS_HOOK if name == "sweep" else f"plugtrain_{name}"
        assert info.hooks == [hook] and info.error is None
        assert info.version == importlib.metadata.version("plugtrain")
    losses = reg.components("losses")
    assert {"CrossEntropy", "MSE"} <= {c.name for c in losses}
    assert all(c.kind == "losses" and c.plugin == "losses" and c.distribution == "plugtrain" for c in losses)


def test_components_keep_registration_order_builtins_first(registry):
    reg, _ = registry("clash", "example")
    plugins = [c.plugin for c in reg.components("losses")]
    assert plugins == sorted(plugins, key=lambda p: (p != "losses", p))
    assert [p.name for p in reg.plugins][-3:] == ["clasha", "clashb", "example"]


def test_broken_import_is_isolated_and_reported(registry):
    reg, warnings = registry("broken", "example")
    assert warnings == [
        "plugin 'broken' (broken-dist==2.3) failed to load: "
        "RuntimeError: the optional dependency 'unobtainium' is not installed"
    ]
    info = reg.plugin("broken")
    assert info.error == "RuntimeError: the optional dependency 'unobtainium' is not installed"
    assert info.hooks == [] and info.module is None
    assert reg.get("losses", "example-focal").plugin == "example"


def test_hook_error_is_isolated_per_hook(registry):
    reg, warnings = registry("hookfail")
    assert "CrossEntropy" in reg.names("losses")
    assert warnings == [
        "plugin 'hookfail' (hookfail-dist==1.1) failed in plugtrain_losses: "
        "ValueError: the losses table of pt_hook_raises is corrupt"
    ]
    assert reg.get("metrics", "half-metric").distribution == "hookfail-dist"
    reg.components("losses")  # hooks are called once: no second warning
    assert len(warnings) == 1
    assert reg.plugin("hookfail").error.startswith("plugtrain_losses: ValueError")


def test_strict_mode_raises_plugtrain_error(registry, monkeypatch):
    with pytest.raises(PlugtrainError, match=r"plugin 'broken' \(broken-dist==2\.3\) failed to load: .*STRICT"):
        registry("broken", strict=True)
    monkeypatch.setenv("PLUGTRAIN_STRICT_PLUGINS", "1")
    reg, _ = registry("hookfail")  # loading works; the hook fails when its kind is used
    assert reg.strict
    with pytest.raises(PlugtrainError, match=r"failed in plugtrain_losses"):
        reg.components("losses")
    monkeypatch.setenv("PLUGTRAIN_STRICT_PLUGINS", "0")
    assert not registry()[0].strict


def test_misspelled_hook_rejects_the_plugin_with_did_you_mean(registry):
    reg, warnings = registry("typo")
    assert warnings == [
        "plugin 'typo' (typo-dist==0.3) is invalid: unknown hook 'plugtrain_lossess'. Did you mean 'plugtrain_losses'?"
    ]
    assert not reg.pm.has_plugin("typo")
    assert "never-listed" not in reg.names("losses")


def test_hookimpl_with_arguments_the_spec_lacks_is_rejected(tmp_path, registry, monkeypatch):
    make_dist(tmp_path, "args-dist", {"argsplug": "pt_args_plug"}, {"pt_args_plug": """
        from plugtrain import hookimpl

        @hookimpl
        def plugtrain_losses(config):
            return []
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    warnings: list[str] = []
    reg = Registry(entry_points=entry_points_at([tmp_path]), warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("plugin 'argsplug' (args-dist==1.0) is invalid: ")
    assert "plugtrain_losses(config)" in warnings[0] and "config" in reg.plugin("argsplug").error


def test_unmarked_hook_function_is_warned_about(tmp_path, monkeypatch):
    make_dist(tmp_path, "unmarked-dist", {"unmarked": "pt_unmarked"}, {"pt_unmarked": """
        from plugtrain import Component, hookimpl

        def plugtrain_losses():
            return [Component("forgotten", print)]

        @hookimpl
        def plugtrain_metrics():
            return []
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    warnings: list[str] = []
    reg = Registry(entry_points=entry_points_at([tmp_path]), warn=warnings.append)
    assert warnings == [
        "plugin 'unmarked' (unmarked-dist==1.0): function plugtrain_losses lacks the @hookimpl marker and is ignored"
    ]
    assert reg.plugin("unmarked").hooks == ["plugtrain_metrics"]
    assert reg.components("losses") == []


def test_same_entry_point_name_from_two_distributions(tmp_path, monkeypatch):
    for dist, mod in (("first-dist", "pt_same_a"), ("second-dist", "pt_same_b")):
        make_dist(tmp_path / dist, dist, {"same": mod}, {mod: f"""
            from plugtrain import Component, hookimpl

            @hookimpl
            def plugtrain_losses():
                return [Component("{mod}", print)]
        """})
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    warnings: list[str] = []
    reg = Registry(entry_points=entry_points_at([tmp_path / "first-dist", tmp_path / "second-dist"]),
                   warn=warnings.append)
    assert len(warnings) == 1
    assert "could not be registered: the entry-point name 'same' is already used by first-dist==1.0" in warnings[0]
    assert reg.names("losses") == ["pt_same_a"]


def test_disabled_plugins_are_not_imported(registry, monkeypatch):
    reg, warnings = registry("broken", "example", disabled=["broken", "example"])
    assert warnings == []
    assert reg.plugin("broken").disabled and reg.plugin("example").disabled
    assert "example-focal" not in reg.names("losses")
    monkeypatch.setenv("PLUGTRAIN_DISABLE_PLUGINS", " losses ,example")
    reg, warnings = registry("example")
    assert warnings == [] and reg.names("losses") == []


def test_get_registry_is_cached_until_reset():
    reset_registry()
    try:
        first = get_registry()
        assert get_registry() is first
        reset_registry()
        assert get_registry() is not first
    finally:
        reset_registry()


# -- lookup ---------------------------------------------------------------------------------------------------------


def test_get_with_did_you_mean_clash_and_plugin_prefix(registry):
    reg, _ = registry("clash", "example")
    assert reg.get("losses", "CrossEntropy").plugin == "losses"
    with pytest.raises(PlugtrainError, match=r"unknown loss 'cross_entropy'\. Did you mean 'CrossEntropy'\?"):
        reg.get("losses", "cross_entropy")
    with pytest.raises(PlugtrainError) as clash:
        reg.get("loss", "Shared")
    assert str(clash.value) == (
        "the loss name 'Shared' is registered by more than one plugin: plugin 'clasha' (clash-a-dist==1.0) and "
        "plugin 'clashb' (clash-b-dist==2.0). Write 'clasha:Shared' or 'clashb:Shared' to choose one."
    )
    assert reg.get("losses", "clashb:Shared").build() == ("B", 2.0)
    assert reg.get("losses", "clasha:Shared").build({"alpha": 5}) == ("A", 5)
    with pytest.raises(PlugtrainError, match=r"unknown plugin 'clashz' in clashz:Shared\. Did you mean"):
        reg.get("losses", "clashz:Shared")
    with pytest.raises(PlugtrainError, match=r"unknown loss 'Shard' in plugin 'clasha'\. Did you mean 'Shared'\?"):
        reg.get("losses", "clasha:Shard")
    matches = reg.find("losses", "SH*")
    assert [(c.name, c.plugin) for c in matches] == [("Shared", "clasha"), ("Shared", "clashb")]
    assert reg.find("losses", "example-[f]ocal")[0].qualified_name == "example:example-focal"


def test_a_name_containing_a_colon_is_found_as_is(tmp_path, monkeypatch):
    make_dist(tmp_path, "colon-dist", {"colon": "pt_colon"}, {"pt_colon": """
        from plugtrain import Component, hookimpl

        @hookimpl
        def plugtrain_backbones():
            return [Component("hub:tiny", lambda num_classes=0: num_classes)]
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry(entry_points=entry_points_at([tmp_path]))
    assert reg.get("backbones", "hub:tiny").build(num_classes=4) == 4
    assert reg.get("backbones", "colon:hub:tiny").plugin == "colon"


# -- parameters and building -----------------------------------------------------------------------------------------


def test_params_come_from_the_signature_without_context(registry):
    reg, _ = registry("context")
    comp = reg.get("losses", "ctx-loss")
    assert comp.params == [
        Param("margin", 0.5, float, False),
        Param("mode", "a", Literal["a", "b"], False),
        Param("scale", None, float, True),
    ]
    assert [p.annotation_str for p in comp.params] == ["float", "Literal['a', 'b']", "float"]
    assert not comp.accepts_any_kwargs
    assert comp.one_line == "needs context"
    assert comp.doc.startswith("A loss that needs num_classes")
    assert json.dumps([p.as_json() for p in comp.params])  # JSON-able
    kw = reg.get("losses", "kwargs-loss")
    assert kw.accepts_any_kwargs and [p.name for p in kw.params] == ["weight"]
    assert kw.one_line == "A loss that takes any keyword."  # no summary: the docstring's first line


def test_build_passes_only_the_context_a_factory_names(registry):
    reg, _ = registry("context")
    built = reg.get("losses", "ctx-loss").build({"scale": 2.0}, num_classes=7, embedding_dim=128)
    assert built == {"num_classes": 7, "margin": 0.5, "mode": "a", "scale": 2.0}
    # **kwargs takes every context argument
    assert reg.get("losses", "kwargs-loss").build({"weight": 3.0}, num_classes=7, embedding_dim=128) == {
        "weight": 3.0, "num_classes": 7, "embedding_dim": 128}


def test_signature_params_of_a_class_and_a_kindless_component():
    class Thing:
        def __init__(self, run_dir: str, depth: int = 2, *args, _private: int = 0) -> None:
            pass

    params, var_kw = signature_params(Thing, context={"run_dir"})
    assert [(p.name, p.default, p.annotation_str, p.required) for p in params] == [("depth", 2, "int", False)]
    assert not var_kw
    comp = Component("thing", Thing)  # no kind yet: nothing is context
    assert [p.name for p in comp.params] == ["run_dir", "depth"] and comp.params[0].required


# -- laziness ---------------------------------------------------------------------------------------------------------

HEAVY = ("torch", "timm", "albumentations", "tensorboard", "torchmetrics", "sklearn", "torchvision")


def _imported_after(code: str, paths=()) -> list[str]:
    proc = run_python(
        f"""
        import json, sys
        from plugtrain.core.registry import Registry
        reg = Registry()
        {code}
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """,
        paths=paths,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_listing_light_kinds_imports_no_heavy_library(dists):
    code = "\n        ".join(
        f"assert reg.components({k!r}), {k!r}" for k in ("losses", "loggers", "metrics", "datasets", "callbacks")
    )
    # the example plugin is loaded too: its module must not import torch at the top either
    assert _imported_after(code + "\n        assert reg.get('losses', 'example-focal')", dists["example"]) == []


def test_import_plugtrain_and_help_stay_light():
    proc = run_python(
        """
        import json, sys
        import plugtrain
        from plugtrain.entrypoints import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in ("torch", "timm", "albumentations", "rich") if m in sys.modules)))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_listing_backbones_does_not_import_albumentations_and_vice_versa():
    assert "albumentations" not in _imported_after("reg.components('backbones')")
    assert _imported_after("reg.components('augmentations')").count("timm") == 0


# -- the example plugin really works ----------------------------------------------------------------------------------


def test_example_plugin_components_build_and_run(registry, tmp_path):
    torch = pytest.importorskip("torch")
    reg, warnings = registry("example")
    assert warnings == []
    info = reg.plugin("example")
    assert (info.distribution, info.version, info.hooks) == (
        "plugtrain-example-plugin", "0.1.0", ["plugtrain_backbones", "plugtrain_loggers", "plugtrain_losses"])

    backbone = reg.get("backbones", "example-tinycnn")
    model = backbone.build({"in_chans": 1, "width": 4}, num_classes=3)
    x = torch.randn(2, 1, 16, 16)
    logits = model(x)
    assert logits.shape == (2, 3)
    features = backbone.build({"in_chans": 1, "width": 4}, num_classes=0)(x)
    assert features.shape == (2, 16)  # 4 * width
    with pytest.raises(PlugtrainError, match="width must be at least 1"):
        backbone.build({"width": 0}, num_classes=3)

    targets = torch.tensor([0, 2])
    focal = reg.get("losses", "example-focal")
    ce = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(focal.build({"gamma": 0.0}, num_classes=3)(logits, targets), ce)
    loss = focal.build({}, num_classes=3, embedding_dim=16)(logits, targets)
    assert 0 < loss.item() < ce.item()  # gamma 2 down-weights every sample
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    per_sample = focal.build({"reduction": "none"})(logits.detach(), targets)
    assert per_sample.shape == (2,)

    logger = reg.get("loggers", "example-jsonl").build({}, run_dir=tmp_path, spec={}, rank=0)
    logger.log_metrics({"train/loss": loss.item(), "val/accuracy": torch.tensor(0.5)}, step=1)
    logger.log_metrics({"train/loss": float("nan")}, step=2)
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "train/loss": pytest.approx(loss.item()), "val/accuracy": 0.5},
                     {"step": 2, "train/loss": "nan"}]


def test_example_plugin_pyproject_declares_the_entry_point():
    from helpers_plugins import EXAMPLE_PLUGIN_SRC

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((EXAMPLE_PLUGIN_SRC.parent / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["plugtrain"] == {"example": "plugtrain_example_plugin.plugin"}
    assert (EXAMPLE_PLUGIN_SRC / "plugtrain_example_plugin" / "plugin.py").exists()
    assert (EXAMPLE_PLUGIN_SRC.parent / "README.md").exists()
