"""``monai.networks.nets`` classifiers as plugtrain backbones, for 1-D signals, 2-D images and 3-D volumes.

Each backbone maps ``(N, in_chans, *spatial)`` samples to ``(N, num_classes)`` outputs; ``spatial_dims`` (1, 2 or 3)
must match the data (``data.image_size`` as a list of that many numbers), ``in_chans`` its channels. Weights start
random (MONAI's pretrained weights are downloads, and most are 3-D ResNets of MedicalNet with their own heads).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from annotated_types import Ge, Interval

#: The ResNet depths MONAI has factories for (``monai.networks.nets.resnet10`` ... ``resnet200``).
RESNETS = (10, 18, 34, 50, 101, 152, 200)
#: EfficientNet variants of ``EfficientNetBN``.
EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(8))


def _error(message: str) -> Exception:
    from plugtrain.core.errors import PlugtrainError

    return PlugtrainError(message)


def _first_output(model: Any) -> Any:
    """``model`` returning only its first output (MONAI's ViT returns ``(logits, hidden states)``)."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out[0] if isinstance(out, (tuple, list)) else out

    return FirstOutput(model)


def _finish(model: Any, name: str, num_classes: int) -> Any:
    model.plugtrain_out_features = int(num_classes)
    model.plugtrain_pretrained_report = None
    model.plugtrain_start_weights = None
    model.plugtrain_frozen = []
    model.plugtrain_unfreeze_after = None
    model.plugtrain_requires_callbacks = []
    return model


def _build(name: str, make: Any, num_classes: int) -> Any:
    from plugtrain.core.errors import first_line

    if num_classes < 1:
        raise _error(f"backbone {name}: needs num_classes >= 1 (the dataset's classes, or 1 for a regression target)")
    try:
        model = make()
    except ImportError as exc:  # MONAI's optional imports (einops for the ViT)
        raise _error(f"backbone {name} needs a library that is not installed: {first_line(exc)}") from None
    except (TypeError, ValueError, AssertionError, NotImplementedError, RuntimeError, KeyError) as exc:
        raise _error(f"backbone {name} cannot be built: {first_line(exc) or type(exc).__name__}") from None
    return _finish(model, name, num_classes)


def resnet(depth: int, num_classes: int = 0, in_chans: Annotated[int, Ge(1)] = 1,
           spatial_dims: Literal[1, 2, 3] = 3, widen_factor: Annotated[float, Interval(gt=0, le=8)] = 1.0,
           conv1_t_size: Annotated[int, Ge(1)] = 7, conv1_t_stride: Annotated[int, Ge(1)] = 1,
           no_max_pool: bool = False):
    """MONAI's ResNet (``monai.networks.nets.resnet<depth>``) for ``spatial_dims``-D samples of ``in_chans``
    channels. ``conv1_t_size`` / ``conv1_t_stride``: the first convolution's kernel and stride; ``no_max_pool``:
    skip the first max-pooling (small inputs); ``widen_factor``: channel width multiplier."""
    from monai.networks import nets

    return _build(f"monai-resnet{depth}", lambda: getattr(nets, f"resnet{depth}")(
        spatial_dims=spatial_dims, n_input_channels=in_chans, num_classes=num_classes, widen_factor=widen_factor,
        conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool), num_classes)


def densenet(variant: str, num_classes: int = 0, in_chans: Annotated[int, Ge(1)] = 1,
             spatial_dims: Literal[1, 2, 3] = 3, init_features: Annotated[int, Ge(1)] = 64,
             growth_rate: Annotated[int, Ge(1)] = 32, dropout_prob: Annotated[float, Interval(ge=0, lt=1)] = 0.0):
    """MONAI's DenseNet (``DenseNet121`` / ``DenseNet169``) for ``spatial_dims``-D samples of ``in_chans`` channels.
    ``init_features`` / ``growth_rate``: its widths (smaller is faster)."""
    from monai.networks import nets

    return _build(f"monai-{variant}", lambda: getattr(nets, variant)(
        spatial_dims=spatial_dims, in_channels=in_chans, out_channels=num_classes, init_features=init_features,
        growth_rate=growth_rate, dropout_prob=dropout_prob), num_classes)


def efficientnet(num_classes: int = 0, in_chans: Annotated[int, Ge(1)] = 1, spatial_dims: Literal[1, 2, 3] = 3,
                 model_name: Literal[EFFICIENTNETS] = "efficientnet-b0"):  # type: ignore[valid-type]
    """MONAI's ``EfficientNetBN`` (``model_name`` efficientnet-b0 ... b7) for ``spatial_dims``-D samples."""
    from monai.networks import nets

    return _build("monai-EfficientNetBN", lambda: nets.EfficientNetBN(
        model_name, pretrained=False, spatial_dims=spatial_dims, in_channels=in_chans, num_classes=num_classes),
        num_classes)


def seresnet50(num_classes: int = 0, in_chans: Annotated[int, Ge(1)] = 1, spatial_dims: Literal[1, 2, 3] = 3,
               dropout_prob: Annotated[float, Interval(ge=0, lt=1)] | None = None):
    """MONAI's ``SEResNet50`` (squeeze-and-excitation ResNet-50) for ``spatial_dims``-D samples."""
    from monai.networks import nets

    return _build("monai-SEResNet50", lambda: nets.SEResNet50(
        spatial_dims=spatial_dims, in_channels=in_chans, num_classes=num_classes, dropout_prob=dropout_prob),
        num_classes)


def vit(num_classes: int = 0, in_chans: Annotated[int, Ge(1)] = 1, spatial_dims: Literal[1, 2, 3] = 3,
        img_size: list[int] | None = None, patch_size: Annotated[int, Ge(1)] = 4,
        hidden_size: Annotated[int, Ge(1)] = 192, mlp_dim: Annotated[int, Ge(1)] = 768,
        num_layers: Annotated[int, Ge(1)] = 4, num_heads: Annotated[int, Ge(1)] = 4,
        dropout_rate: Annotated[float, Interval(ge=0, le=1)] = 0.0):
    """MONAI's ``ViT`` classifier for ``spatial_dims``-D samples of ``img_size`` (the data's spatial size, e.g.
    ``[16, 16, 16]``), cut into patches of ``patch_size`` a side; ``hidden_size`` a multiple of ``num_heads``."""
    from monai.networks import nets

    if img_size is None or len(img_size) != spatial_dims:
        raise _error(f"backbone monai-ViT: img_size must be the samples' spatial size, {spatial_dims} number(s) "
                     f"(spatial_dims = {spatial_dims}), e.g. data.image_size; got {img_size!r}")
    model = _build("monai-ViT", lambda: nets.ViT(
        in_channels=in_chans, img_size=list(img_size), patch_size=patch_size, hidden_size=hidden_size,
        mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, classification=True, num_classes=num_classes,
        dropout_rate=dropout_rate, spatial_dims=spatial_dims, post_activation=None), num_classes)
    return _finish(_first_output(model), "monai-ViT", num_classes)


def factories() -> dict[str, Any]:
    """``{backbone name: factory}`` of every MONAI backbone offered."""
    out: dict[str, Any] = {f"monai-resnet{d}": functools.partial(resnet, d) for d in RESNETS}
    out.update({f"monai-{v}": functools.partial(densenet, v) for v in ("DenseNet121", "DenseNet169")})
    out.update({"monai-EfficientNetBN": efficientnet, "monai-SEResNet50": seresnet50, "monai-ViT": vit})
    return out
