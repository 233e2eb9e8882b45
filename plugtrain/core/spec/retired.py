"""Hints for names and parameters that a library removed, so that an old spec gets told what replaced them.

A hint is used only when the name or parameter is really unknown (the registry lacks the name, the signature lacks the
parameter), so a hint can never reject something that works. Keys: ``"Name"`` for a component,
``"Name.param"`` for a parameter of one component and ``"*.param"`` for a parameter of any component of the kind.

A plugin adds hints of its own with a module attribute of the same shape::

    PLUGTRAIN_RETIRED = {"losses": {"OldLoss": "renamed to NewLoss in mylib 2.0"}}

The built-in table below covers albumentations 1.x → 2.x (the built-in augmentations plugin wraps albumentations).
"""

from __future__ import annotations

from typing import Any

_A2 = "albumentations 2"

BUILTIN: dict[str, dict[str, str]] = {
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


def retired_hint(table: dict[str, dict[str, str]], kind: str, name: str, param: str | None = None) -> str:
    """The hint for a removed component ``name`` (``param`` None) or a removed parameter of it, or ``""``."""
    hints = table.get(kind, {})
    if param is None:
        return hints.get(name, "")
    return hints.get(f"{name}.{param}") or hints.get(f"*.{param}", "")


def collect(plugins: list[Any]) -> dict[str, dict[str, str]]:
    """The built-in table merged with every loaded plugin module's ``PLUGTRAIN_RETIRED``."""
    table = {k: dict(v) for k, v in BUILTIN.items()}
    for info in plugins:
        extra = getattr(getattr(info, "module", None), "PLUGTRAIN_RETIRED", None)
        if isinstance(extra, dict):
            for kind, hints in extra.items():
                if isinstance(hints, dict):
                    table.setdefault(kind, {}).update({str(k): str(v) for k, v in hints.items()})
    return table
