"""Optimizers: every ``torch.optim`` optimizer class, by its exact name."""

from __future__ import annotations

import inspect

from plugtrain import Component, hookimpl


@hookimpl
def plugtrain_optimizers():
    import torch

    comps = []
    for name, obj in sorted(vars(torch.optim).items()):
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            doc = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0]
            comps.append(Component(name, obj, summary=doc or f"torch.optim.{name}"))
    return comps
