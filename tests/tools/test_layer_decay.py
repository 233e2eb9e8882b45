"""``optimizer.layer_decay`` (issue 25, item 6): timm's layer-wise lr decay parameter groups (the ``layer_decay``
role), each group's lr scaled before the scheduler reads it; ``check`` refuses a value outside (0, 1]."""

from __future__ import annotations

import pytest
from conftest import tiny_spec


def _built(spec_path):
    import torch

    from plugtrain.core.runtime import build, distributed
    from plugtrain.core.spec.loader import load_spec

    return build.build_run(load_spec(str(spec_path)), distributed.DistEnv(device=torch.device("cpu")))


def test_layer_decay_scales_each_layer_groups_lr_by_timm_groups(tmp_path):
    import timm.optim

    spec = tiny_spec(tmp_path, backbone="resnet10t", batch_size=8, steps=2,
                     extra="[optimizer]\nname = \"AdamW\"\nlr = 0.01\nweight_decay = 0.05\nlayer_decay = 0.5\n")
    text = spec.read_text().replace('[optimizer]\nname = "AdamW"\nlr = 3e-3\nweight_decay = 0.05\n', "", 1)
    spec.write_text(text)
    built = _built(spec)
    groups = built.optimizer.param_groups
    expected = timm.optim.param_groups_layer_decay(built.backbone, weight_decay=0.05, layer_decay=0.5,
                                                   weight_decay_exclude_1d=False)
    assert len(groups) == len(expected) > 2
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] < 0.1  # the head at the spec's lr, the stem decayed
    for g in groups:
        assert g["lr"] == pytest.approx(0.01 * g["lr_scale"])
        assert g["initial_lr"] == pytest.approx(g["lr"])  # what the scheduler starts from: the scaled lr
    head = {id(p) for p in built.backbone.get_classifier().parameters()}
    assert all(g["lr_scale"] == 1.0 for g in groups if any(id(p) in head for p in g["params"]))
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(built.backbone.parameters()))


@pytest.mark.parametrize("value", [0, 1.5, -0.2])
def test_check_refuses_layer_decay_outside_0_1(tmp_path, cli_run, value):
    spec = tiny_spec(tmp_path, extra="")
    r = cli_run("check", spec, "--set", f"optimizer.layer_decay={value}")
    assert r.returncode == 2 and "layer_decay" in r.stderr and "(0, 1]" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
