"""Backbones: every model that ``timm.list_models()`` knows, built by timm without any download."""

from __future__ import annotations

import functools

from plugtrain import Component, hookimpl


def timm_backbone(
    model_name: str,
    num_classes: int = 0,
    in_chans: int = 3,
    pretrained: bool | str = False,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    global_pool: str = "avg",
):
    """A timm model (``timm.create_model``), never downloaded.

    ``pretrained`` is ``false`` or the path of a local weights file (safetensors, or a weights-only torch file);
    no code path downloads from a hub. ``drop_rate`` is the classifier dropout, ``drop_path_rate`` the stochastic
    depth rate, ``global_pool`` timm's pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``, ``''``).
    """
    import timm

    from plugtrain.core.weights import load_weights

    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate, "global_pool": global_pool}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if pretrained not in (False, None, "", True):
        load_weights(model, str(pretrained))
    elif pretrained is True:
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(
            "backbone.pretrained = true would need a download, and plugtrain never downloads: "
            "set pretrained to the path of a local weights file (.safetensors or .pt)."
        )
    return model


@hookimpl
def plugtrain_backbones():
    import timm

    return [
        Component(name, functools.partial(timm_backbone, name), summary=f"timm model {name}")
        for name in timm.list_models()
    ]
