"""Learning-rate schedulers: every ``torch.optim.lr_scheduler`` class by its exact name, with run-aware defaults.

* ``CosineAnnealingLR``: ``T_max`` defaults to the run's ``epochs``.
* ``CyclicLR`` and ``OneCycleLR`` step once per optimizer step: the returned scheduler has ``interval = "step"``.
  Their ``max_lr`` defaults to the optimizer's learning rate (per parameter group), ``CyclicLR``'s ``base_lr`` to a
  tenth of it and its ``step_size_up`` to two epochs of steps; ``OneCycleLR`` runs over the run's ``total_steps``
  (and holds its final learning rate if stepped past them). ``cycle_momentum`` defaults to on when the optimizer
  has a momentum or betas to cycle.
* ``ReduceLROnPlateau`` steps with a metric: ``scheduler.step(value)`` after each validation. Its ``mode`` defaults
  to ``"auto"``: the runtime calls ``scheduler.set_run_mode("max" | "min")`` with the direction of the metric it
  passes (the run's primary metric).
* Every other class (``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``CosineAnnealingWarmRestarts``,
  ``LinearLR``, ``ConstantLR``, ``PolynomialLR``) with its own keyword arguments. ``LambdaLR`` and
  ``MultiplicativeLR`` (need a Python function) and ``SequentialLR`` / ``ChainedScheduler`` (need scheduler
  objects) cannot be written in a spec and are not listed.

A scheduler without an ``interval`` attribute steps once per epoch (unless the spec's ``scheduler.interval`` says
otherwise). Linear warmup is not a scheduler here: the runtime composes it with any of these
(``scheduler.warmup_epochs`` / ``warmup_steps``).
"""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl

Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
#: A momentum for cycle_momentum, or a fraction of the run: in [0, 1].
Unit = Annotated[float, Interval(ge=0, le=1)]
Steps = Annotated[int, Ge(1)]

_SKIP = {"LRScheduler", "_LRScheduler", "ChainedScheduler", "SequentialLR", "LambdaLR", "MultiplicativeLR"}


def _group_lrs(optimizer) -> list[float]:
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


def _one(values: list[float]) -> float | list[float]:
    return values[0] if len(set(values)) == 1 else values


def _has_momentum(optimizer) -> bool:
    """Whether torch's cyclic-momentum code can cycle this optimizer's momentum (or Adam's beta1)."""
    defaults = getattr(optimizer, "defaults", {}) or {}
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    if "betas" in defaults and "betas" in group:
        return True
    return "momentum" in defaults and float(group.get("momentum", 0.0) or 0.0) > 0.0


def cosine_annealing(optimizer, epochs: int, T_max: Steps | None = None, eta_min: NonNegative = 0.0):
    """Cosine annealing from the initial lr to ``eta_min`` over ``T_max`` epochs (default: the whole run)."""
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max or epochs, eta_min=eta_min)


def cyclic_lr(
    optimizer,
    steps_per_epoch: int,
    base_lr: Positive | None = None,
    max_lr: Positive | None = None,
    step_size_up: Steps | None = None,
    step_size_down: Steps | None = None,
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
    gamma: Positive = 1.0,
    cycle_momentum: bool | None = None,
    base_momentum: Unit = 0.8,
    max_momentum: Unit = 0.9,
):
    """Cyclical learning rate (per step) between ``base_lr`` and ``max_lr`` (default: the optimizer's lr and a tenth
    of it); ``step_size_up`` steps up (default: two epochs), ``step_size_down`` down (default: the same)."""
    import torch

    lrs = _group_lrs(optimizer)
    top = [max_lr] * len(lrs) if max_lr is not None else lrs
    bottom = [base_lr] * len(lrs) if base_lr is not None else [x / 10.0 for x in top]
    up = step_size_up or max(1, 2 * int(steps_per_epoch or 1))
    if cycle_momentum is None:
        cycle_momentum = _has_momentum(optimizer)
    sched = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=_one(bottom), max_lr=_one(top), step_size_up=up, step_size_down=step_size_down, mode=mode,
        gamma=gamma, cycle_momentum=cycle_momentum, base_momentum=base_momentum, max_momentum=max_momentum,
    )
    sched.interval = "step"
    return sched


def one_cycle_lr(
    optimizer,
    total_steps: int,
    max_lr: Positive | None = None,
    pct_start: Annotated[float, Interval(gt=0, lt=1)] = 0.3,
    anneal_strategy: Literal["cos", "linear"] = "cos",
    cycle_momentum: bool | None = None,
    base_momentum: Unit = 0.85,
    max_momentum: Unit = 0.95,
    div_factor: Positive = 25.0,
    final_div_factor: Positive = 1e4,
    three_phase: bool = False,
):
    """One-cycle policy (per step) over the run's steps: up from ``max_lr / div_factor`` to ``max_lr`` (default: the
    optimizer's lr) during ``pct_start`` of the run, then down to ``max_lr / div_factor / final_div_factor``."""
    from plugtrain.plugins.scheduler_classes import OneCycleLR

    lrs = _group_lrs(optimizer)
    top = [max_lr] * len(lrs) if max_lr is not None else lrs
    if cycle_momentum is None:
        cycle_momentum = _has_momentum(optimizer)
    sched = OneCycleLR(
        optimizer, max_lr=_one(top), total_steps=max(2, int(total_steps)), pct_start=pct_start,
        anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum, base_momentum=base_momentum,
        max_momentum=max_momentum, div_factor=div_factor, final_div_factor=final_div_factor, three_phase=three_phase,
    )
    sched.interval = "step"
    return sched


def reduce_lr_on_plateau(
    optimizer,
    mode: Literal["auto", "min", "max"] = "auto",
    factor: Annotated[float, Interval(gt=0, lt=1)] = 0.1,
    patience: Annotated[int, Ge(0)] = 10,
    threshold: NonNegative = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: Annotated[int, Ge(0)] = 0,
    min_lr: NonNegative = 0.0,
    eps: NonNegative = 1e-8,
):
    """Multiply the lr by ``factor`` when the monitored metric (the run's primary metric) has not improved for
    ``patience`` validations; ``mode = "auto"`` follows the metric's direction."""
    from plugtrain.plugins.scheduler_classes import ReduceLROnPlateau

    return ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
        cooldown=cooldown, min_lr=min_lr, eps=eps,
    )


_OWN = {
    "CosineAnnealingLR": cosine_annealing,
    "CyclicLR": cyclic_lr,
    "OneCycleLR": one_cycle_lr,
    "ReduceLROnPlateau": reduce_lr_on_plateau,
}


@hookimpl
def plugtrain_schedulers():
    import torch

    sched = torch.optim.lr_scheduler
    comps = []
    for name, obj in sorted(vars(sched).items()):
        if name in _SKIP or name.startswith("_") or not inspect.isclass(obj):
            continue
        if not (issubclass(obj, sched.LRScheduler) or name == "ReduceLROnPlateau"):
            continue
        doc = (inspect.getdoc(obj) or "").strip().split("\n", 1)[0] or f"torch.optim.lr_scheduler.{name}"
        comps.append(Component(name, _OWN.get(name, obj), summary=doc if name not in _OWN else ""))
    return comps
