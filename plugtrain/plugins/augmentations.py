"""Augmentations: every albumentations transform and composition, by its class name.

Every public class of the ``albumentations`` package that is a transform (``BasicTransform``) or a composition
(``BaseCompose``) is a component, its factory the class itself: its parameters are the class's keyword arguments
and a composition (``OneOf``, ``SomeOf``, ``Sequential``, ``OneOrOther``, ``RandomOrder``, ...) takes its children
in ``transforms`` (built by the runtime, nested to any depth, each with its own ``p``). Left out: the abstract
bases and ``ReplayCompose`` (it records parameters for replay; plugtrain seeds every sample's augmentation instead).

plugtrain's pipelines carry images only. The 3D transforms (volumes) and the few that need bounding boxes or a mask
(:data:`NEEDS_OTHER_TARGETS`) are listed, since they are albumentations transforms, but say in their summary that
they cannot work on an image alone. Names and arguments that albumentations 2 removed get a hint naming the
replacement (:data:`PLUGTRAIN_RETIRED`), and ``plugtrain check`` runs each transform's own pydantic ``InitSchema``
on its arguments (:func:`validate`, this module's ``PLUGTRAIN_VALIDATE``).

Roles: ``Resize`` resizes every pipeline's images to ``data.image_size`` (``resize``), ``Compose`` makes the
pipelines (``compose``), and timm's ``Mixup`` (:func:`mixup`, runtime-only: not a per-sample transform) implements
the ``[mixup]`` section on whole batches (``batch_mix``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

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


_A2 = "albumentations 2"

#: Hints for albumentations 1.x names and arguments that 2.x removed (see :mod:`plugtrain.core.spec.retired`).
PLUGTRAIN_RETIRED: dict[str, dict[str, str]] = {
    "augmentations": {
        # removed transforms
        "Flip": f"{_A2} removed Flip: use HorizontalFlip, VerticalFlip, or D4 for all eight flips and rotations",
        "JpegCompression": f'{_A2} removed JpegCompression: use ImageCompression with compression_type = "jpeg" '
        "and quality_range = [low, high]",
        "Cutout": f"{_A2} removed Cutout: use CoarseDropout with num_holes_range, hole_height_range, hole_width_range "
        "and fill",
        "RandomBrightness": f"{_A2} removed RandomBrightness: use RandomBrightnessContrast with brightness_limit",
        "RandomContrast": f"{_A2} removed RandomContrast: use RandomBrightnessContrast with contrast_limit",
        "IAAAdditiveGaussianNoise": f"{_A2} removed the IAA transforms: use GaussNoise",
        "IAAAffine": f"{_A2} removed the IAA transforms: use Affine",
        "IAAPerspective": f"{_A2} removed the IAA transforms: use Perspective",
        "IAASharpen": f"{_A2} removed the IAA transforms: use Sharpen",
        "IAAEmboss": f"{_A2} removed the IAA transforms: use Emboss",
        "IAASuperpixels": f"{_A2} removed the IAA transforms: use Superpixels",
        "IAAPiecewiseAffine": f"{_A2} removed the IAA transforms: use PiecewiseAffine",
        "IAACropAndPad": f"{_A2} removed the IAA transforms: use CropAndPad",
        "IAAFliplr": f"{_A2} removed the IAA transforms: use HorizontalFlip",
        "IAAFlipud": f"{_A2} removed the IAA transforms: use VerticalFlip",
        "ToTensor": "plugtrain converts images to tensors itself (after Normalize): leave ToTensor out "
        "([augmentations] normalize = true does both)",
        # parameters of any transform
        "*.always_apply": f"{_A2} removed always_apply: write p = 1.0",
        "*.value": f"{_A2} renamed value to fill",
        "*.mask_value": f"{_A2} renamed mask_value to fill_mask",
        "*.fill_value": f"{_A2} renamed fill_value to fill",
        "*.mask_fill_value": f"{_A2} renamed mask_fill_value to fill_mask",
        "*.cval": f"{_A2} renamed cval to fill",
        "*.cval_mask": f"{_A2} renamed cval_mask to fill_mask",
        "*.pad_cval": f"{_A2} renamed pad_cval to fill",
        "*.pad_cval_mask": f"{_A2} renamed pad_cval_mask to fill_mask",
        "*.pad_val": f"{_A2} renamed pad_val to fill",
        "*.mask_pad_val": f"{_A2} renamed mask_pad_val to fill_mask",
        "*.pad_mode": f"{_A2} renamed pad_mode to border_mode",
        # parameters of one transform
        "RandomResizedCrop.height": f"{_A2} replaced height and width with size = [height, width]",
        "RandomResizedCrop.width": f"{_A2} replaced height and width with size = [height, width]",
        "RandomSizedCrop.height": f"{_A2} replaced height and width with size = [height, width]",
        "RandomSizedCrop.width": f"{_A2} replaced height and width with size = [height, width]",
        "ShiftScaleRotate.value": f"{_A2} renamed value to fill (and ShiftScaleRotate is now a special case of "
        "Affine: prefer Affine)",
        "Affine.mode": f"{_A2} renamed mode to border_mode",
        "GaussNoise.var_limit": f"{_A2} replaced var_limit (a variance in pixels) with std_range = [low, high], "
        "the standard deviation as a fraction of the maximum pixel value (0..1)",
        "GaussNoise.mean": f"{_A2} replaced mean with mean_range = [low, high]",
        "ImageCompression.quality_lower": f"{_A2} replaced quality_lower and quality_upper with "
        "quality_range = [lower, upper]",
        "ImageCompression.quality_upper": f"{_A2} replaced quality_lower and quality_upper with "
        "quality_range = [lower, upper]",
        "CoarseDropout.max_holes": f"{_A2} replaced min_holes and max_holes with num_holes_range = [min, max]",
        "CoarseDropout.min_holes": f"{_A2} replaced min_holes and max_holes with num_holes_range = [min, max]",
        "CoarseDropout.max_height": f"{_A2} replaced min_height and max_height with hole_height_range = [min, max]",
        "CoarseDropout.min_height": f"{_A2} replaced min_height and max_height with hole_height_range = [min, max]",
        "CoarseDropout.max_width": f"{_A2} replaced min_width and max_width with hole_width_range = [min, max]",
        "CoarseDropout.min_width": f"{_A2} replaced min_width and max_width with hole_width_range = [min, max]",
        "Downscale.scale_min": f"{_A2} replaced scale_min and scale_max with scale_range = [min, max]",
        "Downscale.scale_max": f"{_A2} replaced scale_min and scale_max with scale_range = [min, max]",
        "Downscale.interpolation": f"{_A2} replaced interpolation with interpolation_pair = "
        "{ downscale = ..., upscale = ... }",
        "RandomFog.fog_coef_lower": f"{_A2} replaced fog_coef_lower and fog_coef_upper with fog_coef_range",
        "RandomFog.fog_coef_upper": f"{_A2} replaced fog_coef_lower and fog_coef_upper with fog_coef_range",
        "RandomRain.slant_lower": f"{_A2} replaced slant_lower and slant_upper with slant_range",
        "RandomRain.slant_upper": f"{_A2} replaced slant_lower and slant_upper with slant_range",
        "RandomShadow.num_shadows_lower": f"{_A2} replaced num_shadows_lower and num_shadows_upper with "
        "num_shadows_limit",
        "RandomShadow.num_shadows_upper": f"{_A2} replaced num_shadows_lower and num_shadows_upper with "
        "num_shadows_limit",
        "RandomSunFlare.angle_lower": f"{_A2} replaced angle_lower and angle_upper with angle_range",
        "RandomSunFlare.angle_upper": f"{_A2} replaced angle_lower and angle_upper with angle_range",
        "RandomSunFlare.num_flare_circles_lower": f"{_A2} replaced num_flare_circles_lower and "
        "num_flare_circles_upper with num_flare_circles_range",
        "RandomSunFlare.num_flare_circles_upper": f"{_A2} replaced num_flare_circles_lower and "
        "num_flare_circles_upper with num_flare_circles_range",
        "RandomSnow.snow_point_lower": f"{_A2} replaced snow_point_lower and snow_point_upper with snow_point_range",
        "RandomSnow.snow_point_upper": f"{_A2} replaced snow_point_lower and snow_point_upper with snow_point_range",
        "Solarize.threshold": f"{_A2} replaced threshold with threshold_range = [low, high] (0..1)",
        "GridDropout.unit_size_min": f"{_A2} replaced unit_size_min and unit_size_max with unit_size_range",
        "GridDropout.unit_size_max": f"{_A2} replaced unit_size_min and unit_size_max with unit_size_range",
        "GridDropout.holes_number_x": f"{_A2} replaced holes_number_x and holes_number_y with holes_number_xy",
        "GridDropout.holes_number_y": f"{_A2} replaced holes_number_x and holes_number_y with holes_number_xy",
        "GridDropout.shift_x": f"{_A2} replaced shift_x and shift_y with shift_xy",
        "GridDropout.shift_y": f"{_A2} replaced shift_x and shift_y with shift_xy",
        "MaskDropout.image_fill_value": f"{_A2} renamed image_fill_value to fill",
        "ElasticTransform.alpha_affine": f"{_A2} removed alpha_affine: add an Affine transform for that part",
        "OpticalDistortion.shift_limit": f"{_A2} removed shift_limit",
    },
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


#: What albumentations' transforms declare: plugtrain gives them 2-D images (HxWxC) only.
IMAGES_2D = {"spatial_dims": (2,)}

#: The transforms that fulfil the runtime's augmentation roles.
ROLES = {"Resize": ("resize",), "Compose": ("compose",)}


def mixup(
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: Literal["batch", "pair", "elem"] = "batch",
    label_smoothing: float = 0.1,
) -> Any:
    """timm's Mixup / CutMix on whole batches: ``mix(images, targets) -> (images, soft targets)``.

    Class indices ``(N,)`` become mixed one-hot rows (timm's own targets); multi-hot float targets ``(N, C)``
    (multilabel) are mixed as they are, ``lam * t + (1 - lam) * t.flip(0)``, after binary label smoothing
    (``t * (1 - s) + s / 2``), with the same image mixing and random draws."""
    return _multi_hot_mixup()(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
                              switch_prob=switch_prob, mode=mode, label_smoothing=label_smoothing,
                              num_classes=num_classes)


@functools.cache
def _multi_hot_mixup() -> type:
    """timm's ``Mixup`` taught multi-hot targets (a class made on first use: timm is imported only then)."""
    from timm.data import Mixup

    class BatchMix(Mixup):
        def __call__(self, x: Any, target: Any) -> tuple[Any, Any]:
            if not (target.is_floating_point() and target.ndim == 2):
                return super().__call__(x, target)  # class indices: timm's own path, unchanged
            if len(x) % 2:
                raise ValueError("mixup needs an even batch size")
            if self.mode == "elem":
                lam = self._mix_elem(x)
            elif self.mode == "pair":
                lam = self._mix_pair(x)
            else:
                lam = self._mix_batch(x)
            y = target.float() * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return x, y * lam + y.flip(0) * (1.0 - lam)

    BatchMix.__qualname__ = BatchMix.__name__ = "MultiHotMixup"
    return BatchMix


def validate(factory: Any, params: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[Any, str, bool]]:
    """A transform's own pydantic ``InitSchema`` check of its arguments (value ranges, min <= max, ...).

    Only errors about a key the spec sets are reported (one per key): an error about a default is not the user's
    doing. Warnings the schema emits (deprecations) come back as warnings about the whole table."""
    import sys
    import warnings

    schema = getattr(factory, "InitSchema", None)
    fields = getattr(schema, "model_fields", None)
    if not isinstance(fields, dict) or "pydantic" not in sys.modules:
        return []
    import pydantic

    if not (isinstance(schema, type) and issubclass(schema, pydantic.BaseModel)):
        return []
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name in params and name != "transforms":
            kwargs[name] = params[name]
        elif name in defaults:
            kwargs[name] = defaults[name]
        elif name == "strict":
            kwargs[name] = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            schema(**kwargs)
    except pydantic.ValidationError as exc:
        out: list[tuple[Any, str, bool]] = []
        seen = set()
        for err in exc.errors():
            loc = err.get("loc") or ()
            key = loc[0] if loc else None
            if key is not None and key not in params:
                continue  # about a default, or a field the signature lacks
            if key in seen:
                continue
            seen.add(key)
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            out.append((key, msg, False))
        return out
    return [(None, str(w.message), True) for w in caught
            if issubclass(w.category, (UserWarning, DeprecationWarning, FutureWarning))]


PLUGTRAIN_VALIDATE = validate
#: Its verdict depends only on the transform, its arguments and albumentations' version: ``check`` may reuse it.
PLUGTRAIN_VALIDATE_PURE = True


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
            comps.append(Component(name, obj, summary=_summary(name, obj, issubclass(obj, Transform3D)),
                                   roles=ROLES.get(name, ()), fits=IMAGES_2D))
    comps.append(Component("timm-mixup", mixup, summary="timm's Mixup / CutMix on batches: the [mixup] section",
                           roles=("batch_mix",)))
    return comps
