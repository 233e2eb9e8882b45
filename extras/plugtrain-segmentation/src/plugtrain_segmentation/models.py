"""segmentation_models_pytorch architectures as plugtrain backbones: complete models, images to per-pixel logits.

Every smp architecture is a backbone named ``smp-<Architecture>`` (``smp-Unet``, ``smp-FPN``, ``smp-DeepLabV3Plus``,
...), with any of smp's encoders, timm's included (``encoder_name = "tu-resnet18"``). The model maps ``(N, C, H, W)``
images to ``(N, num_classes, H, W)`` logits; there is no head to add. Pretrained encoder weights come through the
Hugging Face Hub cache, as the timm backbones' do (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` makes the
cache the only source).
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

from annotated_types import Ge, Interval

#: The smp architectures offered (smp's class names); those the installed smp lacks are left out.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN",
                 "UPerNet", "Segformer", "DPT")


def architectures() -> list[str]:
    """The architectures of :data:`ARCHITECTURES` this smp has (imports smp: call from a hook, not at import)."""
    import segmentation_models_pytorch as smp

    return [a for a in ARCHITECTURES if hasattr(smp, a)]


def smp_model(
    architecture: str,
    num_classes: int = 0,
    encoder_name: str = "resnet18",
    encoder_weights: str | bool | None = None,
    in_chans: Annotated[int, Ge(1)] = 3,
    encoder_depth: Annotated[int, Interval(ge=3, le=5)] = 5,
    freeze: list[str] | None = None,
):
    """An smp segmentation model: ``(N, in_chans, H, W)`` images to ``(N, num_classes, H, W)`` logits.

    ``encoder_name``: any smp encoder (``resnet18``, ``efficientnet-b0``, ``mit_b0``, ...) or a timm model as
    ``"tu-<timm name>"``. ``encoder_weights``: ``None`` (random initialisation), a tag smp knows for the encoder
    (``"imagenet"``), or ``true`` for a ``tu-`` encoder (timm's default pretrained tag); downloaded once into the
    Hugging Face Hub cache. ``encoder_depth``: the encoder stages used (3 to 5; H and W must be multiples of
    ``2 ** encoder_depth``). ``freeze``: module-name prefixes (``["encoder"]``) whose parameters are not trained.
    """
    import segmentation_models_pytorch as smp

    from plugtrain.core.errors import PlugtrainError, did_you_mean, first_line

    if num_classes < 1:
        raise PlugtrainError(f"backbone smp-{architecture}: a segmentation model needs num_classes >= 1 (the "
                             f"dataset's class names, background included)")
    cls = getattr(smp, architecture)
    if not encoder_name.startswith("tu-") and encoder_name not in smp.encoders.get_encoder_names():
        raise PlugtrainError(f"backbone.encoder_name: unknown smp encoder {encoder_name!r}."
                             + did_you_mean(encoder_name, smp.encoders.get_encoder_names())
                             + " A timm model is written \"tu-<timm name>\".")
    if encoder_name.startswith("tu-") and isinstance(encoder_weights, str):
        raise PlugtrainError(f"backbone.encoder_weights: a tu- encoder takes true (timm's pretrained weights) or "
                             f"nothing, not {encoder_weights!r}")
    weights: Any = encoder_weights
    if encoder_weights is False:
        weights = None
    elif encoder_weights is True and not encoder_name.startswith("tu-"):
        weights = "imagenet"
    kwargs: dict[str, Any] = {"encoder_name": encoder_name, "encoder_weights": weights, "in_channels": in_chans,
                              "classes": num_classes}
    if "encoder_depth" in cls.__init__.__code__.co_varnames:
        kwargs["encoder_depth"] = encoder_depth
        if encoder_depth != 5 and "decoder_channels" in cls.__init__.__code__.co_varnames:
            kwargs["decoder_channels"] = (256, 128, 64, 32, 16)[5 - encoder_depth:]
    try:
        model = cls(**kwargs)
    except OSError as exc:  # huggingface_hub's cache misses and HTTP errors are OSErrors
        offline = " (HF_HUB_OFFLINE=1: the cache is the only source; run once with network to fill it)" if (
            os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")) else ""
        raise PlugtrainError(f"backbone.encoder_weights: cannot get the {weights!r} weights of encoder "
                             f"{encoder_name!r} from the Hugging Face Hub{offline}: {type(exc).__name__}: "
                             f"{first_line(exc)}") from None
    except (KeyError, TypeError, ValueError, AssertionError, NotImplementedError, RuntimeError) as exc:
        raise PlugtrainError(f"backbone smp-{architecture} with encoder {encoder_name!r} cannot be built: "
                             f"{first_line(exc) or type(exc).__name__}") from None
    model.plugtrain_out_features = int(num_classes)
    model.plugtrain_pretrained_report = None
    model.plugtrain_start_weights = None if weights is None else {
        "summary": f"smp encoder {encoder_name} weights {weights!r} (Hugging Face Hub cache)",
        "encoder": encoder_name, "weights": weights}
    model.plugtrain_frozen = list(freeze or [])
    model.plugtrain_unfreeze_after = None
    model.plugtrain_requires_callbacks = []
    if freeze:
        from plugtrain.plugins.backbones import freeze_prefixes

        freeze_prefixes(model, freeze)
    return model


def factories() -> dict[str, Any]:
    """``{"smp-<Architecture>": factory}`` for every architecture of the installed smp."""
    return {f"smp-{a}": functools.partial(smp_model, a) for a in architectures()}
