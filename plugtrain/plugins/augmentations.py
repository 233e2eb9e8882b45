"""Augmentations: every albumentations transform and composition, by its class name."""

from __future__ import annotations

import inspect

from plugtrain import Component, hookimpl

_SKIP = {"BaseCompose", "ReplayCompose", "BasicTransform", "DualTransform", "ImageOnlyTransform", "NoOp",
         "Transform3D"}


@hookimpl
def plugtrain_augmentations():
    import albumentations as A
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    comps = []
    for name, obj in sorted(vars(A).items()):
        if name.startswith("_") or name in _SKIP or not inspect.isclass(obj):
            continue
        if issubclass(obj, (BasicTransform, BaseCompose)) and not inspect.isabstract(obj):
            doc = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0]
            comps.append(Component(name, obj, summary=doc or f"albumentations.{name}"))
    return comps
