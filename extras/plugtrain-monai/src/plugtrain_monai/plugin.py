"""The plugtrain plugin of this package: MONAI backbones and transforms, and the ``volumes`` dataset.

plugtrain finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.plugtrain]
    monai = "plugtrain_monai.plugin"

Importing it is cheap: monai is imported by the hooks that list its networks and transforms.
"""

from __future__ import annotations

from plugtrain import Component, hookimpl

from . import dataset, transforms

#: MONAI's networks take signals, images and volumes (``spatial_dims`` 1, 2 or 3, a backbone parameter).
ANY_RANK = {"spatial_dims": (1, 2, 3)}


@hookimpl
def plugtrain_backbones():
    from .nets import factories

    return [Component(name, factory, summary=f"MONAI {name[6:]}: 1-D signals, 2-D images or 3-D volumes "
                                             f"(spatial_dims) of any in_chans", fits=ANY_RANK)
            for name, factory in factories().items()]


def _first_line(cls: type) -> str:
    import inspect

    return ((inspect.getdoc(cls) or "").strip().split("\n", 1)[0] or f"monai.transforms.{cls.__name__}")[:200]


@hookimpl
def plugtrain_augmentations():
    comps = [Component(f"monai-{name}", cls,
                       summary=f"(signals and volumes) {_first_line(cls)}", fits=transforms.SPATIAL)
             for name, cls in transforms.array_transforms().items() if name != "Resize"]
    comps.append(Component("monai-Resize", transforms.resize, roles=("resize:1d", "resize:3d"),
                           fits=transforms.SPATIAL,
                           summary="(signals and volumes) monai.transforms.Resize to data.image_size"))
    comps.append(Component("monai-Compose", transforms.compose, roles=("compose:1d", "compose:3d"),
                           fits=transforms.SPATIAL,
                           summary="(signals and volumes) MONAI transforms in order, seeded per sample by plugtrain"))
    return comps


@hookimpl
def plugtrain_datasets():
    return [Component("volumes", dataset.volumes, fits={"tasks": ("classification", "regression")},
                      summary="Signals or volumes in .npy, multi-page TIFF or NIfTI files: class folders or a CSV.")]
