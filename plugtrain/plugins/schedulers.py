"""Learning-rate schedulers: every ``torch.optim.lr_scheduler`` class by its exact name.

Cosine annealing defaults ``T_max`` to the run's length so that a spec need not repeat ``epochs``.
"""

from __future__ import annotations

import inspect

from plugtrain import Component, hookimpl

_SKIP = {"LRScheduler", "_LRScheduler", "ChainedScheduler", "SequentialLR", "LambdaLR", "MultiplicativeLR"}


def cosine_annealing(optimizer, epochs: int, T_max: int | None = None, eta_min: float = 0.0):  # noqa: N803
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs (default: the whole run)."""
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max or epochs, eta_min=eta_min)


@hookimpl
def plugtrain_schedulers():
    import torch

    sched = torch.optim.lr_scheduler
    comps = [Component("CosineAnnealingLR", cosine_annealing)]
    for name, obj in sorted(vars(sched).items()):
        if name in _SKIP or name == "CosineAnnealingLR" or not inspect.isclass(obj):
            continue
        if issubclass(obj, sched.LRScheduler) or name == "ReduceLROnPlateau":
            doc = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0]
            comps.append(Component(name, obj, summary=doc or f"torch.optim.lr_scheduler.{name}"))
    return comps
