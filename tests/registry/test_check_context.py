"""A plugin's check gets a typed :class:`CheckContext` (issue 22), not hidden context variables to call into.

``PLUGTRAIN_VALIDATE(factory, params, defaults, context)`` receives the queue of run directories before the spec
and whether start inputs are needed; a three-parameter ``validate`` keeps working.
"""

from __future__ import annotations

import functools

import attrs
import pytest
from conftest import run_cli, subprocess_env, tiny_spec
from helpers_plugins import make_dist

from plugtrain.core.runtime import rundir
from plugtrain.core.runtime.rundir import CheckContext, check_context, takes_context
from plugtrain.plugins import backbones


def _backbone_check(pretrained, context=None):
    factory = functools.partial(lambda *a, **k: None, "resnet18")
    return backbones.validate(factory, {"pretrained": pretrained}, {}, context=context)


def test_the_context_holds_what_the_queue_and_the_reopening_set(tmp_path) -> None:
    assert check_context() == CheckContext()
    with rundir.queued_before([tmp_path / "stage1"]), rundir.without_start_inputs():
        ctx = check_context()
    assert ctx.queued_runs == ((tmp_path / "stage1").resolve(),) and ctx.start_inputs_needed is False
    assert ctx.written_by_queue(tmp_path / "stage1" / "checkpoints" / "best.pt")
    assert not ctx.written_by_queue(tmp_path / "elsewhere.pt")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ctx.start_inputs_needed = True  # type: ignore[misc]


def test_the_backbone_check_reads_the_context_it_is_given(tmp_path) -> None:
    later = str(tmp_path / "stage1" / "checkpoints" / "best.pt")
    assert [k for k, _, _ in _backbone_check(later, CheckContext())] == ["pretrained"]  # missing, nothing queued
    assert _backbone_check(later, CheckContext(queued_runs=((tmp_path / "stage1").resolve(),))) == []
    assert _backbone_check(later, CheckContext(start_inputs_needed=False)) == []


def test_spec_dir_is_the_checked_specs_folder_and_relative_paths_resolve_against_it(tmp_path) -> None:
    assert check_context().spec_dir is None and CheckContext().spec_relative("a.csv") == tmp_path.cwd() / "a.csv"
    with rundir.checking_spec(tmp_path / "specs" / "run.toml"):
        ctx = check_context()
    assert ctx.spec_dir == tmp_path / "specs" and check_context().spec_dir is None
    assert ctx.spec_relative("data/a.csv") == tmp_path / "specs" / "data" / "a.csv"
    assert ctx.spec_relative(tmp_path / "abs.csv") == tmp_path / "abs.csv"


def test_context_is_passed_only_to_checks_that_take_it() -> None:
    assert takes_context(lambda factory, params, defaults, context: [])
    assert takes_context(lambda factory, params, defaults, **kw: [])
    assert not takes_context(lambda factory, params, defaults: [])
    assert not takes_context(lambda factory, params, defaults, ctx=None: [])


THIRD_PARTY = """
from plugtrain import Component, hookimpl


def lossy(scale: float = 1.0):
    import torch

    return torch.nn.CrossEntropyLoss()


def validate(factory, params, defaults, context):
    queued = ",".join(p.name for p in context.queued_runs)
    return [(None, f"ctx queued=[{queued}] start={context.start_inputs_needed} "
                   f"type={type(context).__name__} spec_dir={context.spec_dir} "
                   f"labels={context.spec_relative('labels.csv')}", True)]


PLUGTRAIN_VALIDATE = validate


@hookimpl
def plugtrain_losses():
    return [Component("ctx-loss", lossy, summary="cross-entropy; its check reports its context")]
"""

OLD_STYLE = """
from plugtrain import Component, hookimpl


def oldloss(scale: float = 1.0):
    import torch

    return torch.nn.CrossEntropyLoss()


def validate(factory, params, defaults):
    return [("scale", f"old-style check saw scale={params.get('scale', defaults['scale'])}", True)]


PLUGTRAIN_VALIDATE = validate


@hookimpl
def plugtrain_losses():
    return [Component("old-loss", oldloss, summary="cross-entropy; a three-parameter check")]
"""


def test_a_third_party_validator_receives_the_context_and_an_old_one_still_runs(tmp_path) -> None:
    paths = make_dist(tmp_path / "plugin", "pt-ctx", {"ctxloss": "ctx_loss", "oldloss": "old_loss"},
                      {"ctx_loss": THIRD_PARTY, "old_loss": OLD_STYLE})
    first = tiny_spec(tmp_path, name="first")
    second = tiny_spec(tmp_path, name="second")
    second.write_text(second.read_text().replace('name = "CrossEntropy"', 'name = "ctx-loss"'))
    third = tiny_spec(tmp_path, name="third")
    third.write_text(third.read_text().replace('name = "CrossEntropy"', 'name = "old-loss"'))
    proc = run_cli("check", first, second, third, env=subprocess_env(PYTHONPATH=str(paths)),
                   cwd=tmp_path / "plugin")
    assert proc.returncode == 0, proc.stderr
    assert "ctx queued=[first] start=True type=CheckContext" in proc.stderr, proc.stderr
    # the folder of the spec being checked, not the working directory (the child runs in another folder)
    assert f"spec_dir={tmp_path} labels={tmp_path / 'labels.csv'}" in proc.stderr, proc.stderr
    assert "old-style check saw scale=1.0" in proc.stderr, proc.stderr
