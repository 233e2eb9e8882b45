"""``monai.transforms`` array transforms as plugtrain augmentations, and the pipeline and resize roles for signals and
volumes.

Every public array transform of ``monai.transforms`` (not the dictionary ``...d`` ones) is an augmentation named
``monai-<Class>`` (``monai-RandFlip``, ``monai-RandAffine``, ``monai-RandGaussianNoise``, ...), its parameters the
class's own. The pipeline (:class:`Pipeline`, roles ``compose:1d``, ``compose:3d``) takes plugtrain's
channels-last sample (``LxC`` signal, ``DxHxWxC`` volume), gives MONAI its channel-first tensor, and returns the
``C x ...`` float32 tensor. Random transforms are seeded from plugtrain's per-sample generator before every sample
(:meth:`Pipeline.set_random_state`), so the augmentation of a sample is a function of (seed, epoch, index, view) only:
a resumed run draws exactly what the uninterrupted one drew. ``monai-Resize`` (roles ``resize:1d``, ``resize:3d``)
resizes to ``data.image_size`` (``spatial_size``).
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import numpy as np

#: What this package's transforms declare: signals and volumes (plugtrain composes 2-D images with albumentations).
SPATIAL = {"spatial_dims": (1, 3)}

#: monai.transforms classes that are not per-sample array transforms of one image (IO, batches, labels, devices,
#: compositions, wrappers of other libraries, profiling marks).
SKIP = frozenset({
    "Compose", "OneOf", "RandomOrder", "SomeOf", "LoadImage", "SaveImage", "WriteFileMapping", "BatchInverseTransform",
    "PadListDataCollate", "Invert", "ToDevice", "ToCupy", "ToPIL", "ToNumpy", "ToTensor", "EnsureType", "Lambda",
    "RandLambda", "CuCIM", "RandCuCIM", "TorchIO", "RandTorchIO", "TorchVision", "RandTorchVision", "MixUp", "CutMix",
    "CutOut", "RandSpatialCropSamples", "RandCropByLabelClasses", "RandCropByPosNegLabel", "RandWeightedCrop",
    "GridPatch", "RandGridPatch", "GridSplit", "SplitDim", "DataStats", "SimulateDelay", "ApplyTransformToPoints",
    "ConvertBoxToPoints", "ConvertPointsToBoxes", "EnsureChannelFirst", "AsChannelLast", "Mark", "RandMark",
    "RangePop", "RangePush", "RandRangePop", "RandRangePush", "MeanEnsemble", "VoteEnsemble", "ProbNMS",
    "ResampleToMatch", "SpatialResample", "Resample", "AffineGrid", "RandAffineGrid", "RandDeformGrid",
})


#: Transforms whose construction needs a library MONAI imports optionally: offered only where it is installed.
NEEDS = {"ForegroundMask": "skimage"}


def array_transforms() -> dict[str, type]:
    """``{class name: class}`` of the array transforms offered (imports monai: call from a hook)."""
    import monai.transforms as T
    from monai.transforms import MapTransform, Transform

    out = {}
    for name, obj in sorted(vars(T).items()):
        if (name.startswith("_") or name in SKIP or not inspect.isclass(obj) or not issubclass(obj, Transform)
                or issubclass(obj, MapTransform) or inspect.isabstract(obj)
                or name.endswith("Dict") or (name.endswith(("d", "D")) and name[:-1] in vars(T))
                or (name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None)):
            continue
        out[name] = plugtrain_class(obj)
    return out


def _keyword_call(self: Any, img: Any = None, *args: Any, image: Any = None, **kwargs: Any) -> Any:
    """MONAI's call on a channel-first tensor (``t(x)``, inside :class:`Pipeline`), or plugtrain's augmentation
    contract on a channels-last sample (``t(image=array) -> {"image": C x ... tensor}``) when called alone."""
    if image is None:
        return super(type(self), self).__call__(img, *args, **kwargs)
    return Pipeline([self])(image=image)


def plugtrain_class(cls: type) -> type:
    """``cls`` taught plugtrain's ``t(image=...)`` call (a subclass: the same parameters, docs and randomness), kept
    in this module under ``Monai<Name>`` so that DataLoader workers can unpickle it."""
    name = f"Monai{cls.__name__}"
    made = globals().get(name)
    if made is None:
        made = type(name, (cls,), {"__call__": _keyword_call, "__module__": __name__, "__doc__": cls.__doc__,
                                   "__qualname__": name})
        globals()[name] = made
    return made


def resize(spatial_size: list[int], mode: str = "area") -> Any:
    """``monai.transforms.Resize`` to ``spatial_size`` (``[L]`` or ``[D, H, W]``): the ``resize`` role for signals
    and volumes (``data.image_size`` as a list)."""
    from monai.transforms import Resize

    return plugtrain_class(Resize)(spatial_size=list(spatial_size), mode=mode)


class Pipeline:
    """MONAI transforms in order on one channels-last sample, called as albumentations' ``Compose`` is
    (``pipeline(image=array)["image"]``); returns a ``C x ...`` float32 tensor.

    plugtrain calls :meth:`set_random_state` once per process with its generators and sets their state before every
    sample; each random transform is then reseeded from that generator, so its draws depend on the sample's key
    alone (not on the order, the worker or what ran before)."""

    def __init__(self, transforms: list[Any], seed: int = 0) -> None:
        self.transforms = list(transforms)
        self.random_generator: np.random.Generator | None = None
        self._fallback = np.random.default_rng(seed)

    def set_random_state(self, generator: np.random.Generator, py_random: Any = None) -> None:
        self.random_generator = generator

    def __call__(self, *, image: Any, **_: Any) -> dict[str, Any]:
        import torch
        from monai.transforms import Randomizable

        gen = self.random_generator if self.random_generator is not None else self._fallback
        x: Any = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(image), -1, 0)))
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        for t in self.transforms:
            if isinstance(t, Randomizable):
                t.set_random_state(seed=int(gen.integers(2**31 - 1)))
            x = t(x)
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
        return {"image": x.float().contiguous()}

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(type(t).__name__ for t in self.transforms)})"


def compose(transforms: list[Any], seed: int = 0) -> Pipeline:
    """The ``compose`` role for signals and volumes: :class:`Pipeline`."""
    return Pipeline(transforms, seed)
