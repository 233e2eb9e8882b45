"""Augmentations: every albumentations transform and composition, by its class name.

Every public class of the ``albumentations`` package that is a transform (``BasicTransform``) or a composition
(``BaseCompose``) is a component, its factory the class itself: its parameters are the class's keyword arguments
and a composition (``OneOf``, ``SomeOf``, ``Sequential``, ``OneOrOther``, ``RandomOrder``, ...) takes its children
in ``transforms`` (built by the runtime, nested to any depth, each with its own ``p``). Left out: the abstract
bases and ``ReplayCompose`` (it records parameters for replay; plugtrain seeds every sample's augmentation instead).

plugtrain's pipelines carry images only. The 3D transforms (volumes) and the few that need bounding boxes or a mask
(:data:`NEEDS_OTHER_TARGETS`) are listed, since they are albumentations transforms, but say in their summary that
they cannot work on an image alone. Names and arguments that albumentations 2 removed get a hint naming the
replacement from :mod:`plugtrain.core.spec.retired`.
"""

from __future__ import annotations

import inspect

from plugtrain import Component, hookimpl

#: Abstract bases and ReplayCompose: not transforms a spec can use.
SKIP = frozenset({"BaseCompose", "ReplayCompose", "BasicTransform", "DualTransform", "ImageOnlyTransform",
                  "Transform3D"})

#: Transforms that need a target besides the image, which plugtrain's image pipelines do not provide.
NEEDS_OTHER_TARGETS = {
    "BBoxSafeRandomCrop": "bounding boxes",
    "RandomSizedBBoxSafeCrop": "bounding boxes",
    "RandomCropNearBBox": "a cropping_bbox",
    "CropNonEmptyMaskIfExists": "a mask",
}


def _summary(name: str, obj: type, volume: bool) -> str:
    doc = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0] or f"albumentations.{name}"
    if volume:
        return f"(3D volumes only: not usable on images) {doc}"
    if name in NEEDS_OTHER_TARGETS:
        return f"(needs {NEEDS_OTHER_TARGETS[name]}: not usable on images alone) {doc}"
    if name == "ToTensorV2":
        return f"(not needed: plugtrain converts images to tensors itself, after Normalize) {doc}"
    return doc


@hookimpl
def plugtrain_augmentations():
    import albumentations as A
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform, Transform3D

    comps = []
    for name, obj in sorted(vars(A).items()):
        if name.startswith("_") or name in SKIP or not inspect.isclass(obj):
            continue
        if issubclass(obj, (BasicTransform, BaseCompose)) and not inspect.isabstract(obj):
            comps.append(Component(name, obj, summary=_summary(name, obj, issubclass(obj, Transform3D))))
    return comps
