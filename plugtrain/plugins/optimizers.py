"""Optimizers: every ``torch.optim`` optimizer class by its exact name, plus Madgrad, Ranger, LookAhead and SAM.

* Every ``torch.optim`` class (``SGD``, ``Adam``, ``AdamW``, ``RAdam``, ``RMSprop``, ``NAdam``, ...) by its exact
  name with its own keyword arguments — except ``LBFGS`` (needs a closure that re-evaluates the model on every
  step), ``SparseAdam`` (sparse gradients only) and ``Muon`` (2-D parameters only), which cannot train a backbone in
  plugtrain's loop.
* ``Madgrad`` and ``Ranger`` (RAdam + LookAhead + gradient centralisation) from pytorch-optimizer.
* ``LookAhead`` wraps any other optimizer, named by ``base`` and built with ``base_params`` (pytorch-optimizer's
  ``Lookahead``).
* ``SAM`` (sharpness-aware minimisation, pytorch-optimizer's ``SAM``) wraps any other optimizer the same way. It is
  a *two-step* optimizer: after the first forward/backward the runtime calls ``first_step(zero_grad=True)`` (which
  moves the weights to the worst point within ``rho``), runs a second forward/backward there and calls
  ``second_step(zero_grad=True)`` (which restores the weights and takes the base optimizer's step).
  ``step()`` without a closure does what ``second_step`` does (so GradScaler-style ``step`` calls work), and
  ``step(closure)`` does the whole two-pass step.

A wrapper's ``base`` is looked up in the registry, so a plugin's optimizer can be a base too; ``base_params`` are
checked against the base's parameters, and ``lr`` (when given) is a shortcut for ``base_params.lr``. Parameters
with ``requires_grad = False`` (frozen layers) may stay in the optimizer: their gradient is ``None`` and every
optimizer here skips them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl

Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
#: A momentum or beta coefficient: in [0, 1).
Coefficient = Annotated[float, Interval(ge=0, lt=1)]
#: LookAhead's interpolation factor: in [0, 1].
Factor = Annotated[float, Interval(ge=0, le=1)]

#: torch.optim classes that plugtrain's training loop cannot use, and why.
UNSUPPORTED = {
    "LBFGS": "needs a closure that re-evaluates the model on every step",
    "SparseAdam": "handles sparse gradients only",
    "Muon": "handles 2-D parameters only",
}


def _base(owner: str, base: str, base_params: dict[str, Any] | None, lr: float | None) -> tuple[Any, dict[str, Any]]:
    """The registry component of a wrapper's ``base`` optimizer and the checked keyword arguments for it."""
    from plugtrain.core.errors import PlugtrainError, did_you_mean
    from plugtrain.core.registry import get_registry

    if base_params is not None and not isinstance(base_params, dict):
        raise PlugtrainError(f"optimizer {owner}: base_params must be a table of {base}'s parameters, "
                             f"got {type(base_params).__name__}")
    try:
        comp = get_registry().get("optimizers", base)
    except PlugtrainError as exc:
        raise PlugtrainError(f"optimizer {owner}: base: {exc}") from None
    kwargs = dict(base_params or {})
    if lr is not None:
        kwargs["lr"] = lr
    if not comp.accepts_any_kwargs:
        known = [p.name for p in comp.params]
        for key in kwargs:
            if key not in known:
                raise PlugtrainError(
                    f"optimizer {owner}: base_params: {base} has no parameter {key!r}." + did_you_mean(key, known)
                    + f" Its parameters: {', '.join(known)}."
                )
        missing = [p.name for p in comp.params if p.required and p.name not in kwargs]
        if missing:
            raise PlugtrainError(f"optimizer {owner}: base_params must set {', '.join(missing)} for {base}")
    return comp, kwargs


def _build(comp: Any, kwargs: dict[str, Any], **context: Any) -> Any:
    """``comp.build(kwargs, **context)``, spelled out: ``Component.build``'s first argument is itself named
    ``params``, which clashes with the optimizers' ``params`` context argument."""
    try:
        sig = inspect.signature(comp.factory)
        names = {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        any_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    except (TypeError, ValueError):
        names, any_kw = set(), True
    call = dict(kwargs)
    call.update({k: v for k, v in context.items() if any_kw or k in names})
    return comp.factory(**call)


def madgrad(params, lr: Positive = 1e-3, momentum: Coefficient = 0.9, weight_decay: NonNegative = 0.0,
            weight_decouple: bool = False, eps: Positive = 1e-6):
    """MADGRAD (pytorch-optimizer): momentumized, adaptive, dual averaged gradient method."""
    import pytorch_optimizer

    return pytorch_optimizer.MADGRAD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                     weight_decouple=weight_decouple, eps=eps)


def ranger(params, lr: Positive = 1e-3, betas: tuple[Coefficient, Coefficient] = (0.95, 0.999), alpha: Factor = 0.5,
           k: Annotated[int, Ge(1)] = 6, n_sma_threshold: Annotated[int, Ge(0)] = 5, degenerated_to_sgd: bool = False,
           weight_decay: NonNegative = 0.0, use_gc: bool = True, gc_conv_only: bool = False, eps: Positive = 1e-5):
    """Ranger (pytorch-optimizer): RAdam + LookAhead (``k``, ``alpha``) + gradient centralisation."""
    import pytorch_optimizer

    return pytorch_optimizer.Ranger(params, lr=lr, betas=tuple(betas), alpha=alpha, k=k,
                                    n_sma_threshold=n_sma_threshold, degenerated_to_sgd=degenerated_to_sgd,
                                    weight_decay=weight_decay, use_gc=use_gc, gc_conv_only=gc_conv_only, eps=eps)


def lookahead(params, model=None, base: str = "AdamW", k: Annotated[int, Ge(1)] = 5, alpha: Factor = 0.5,
              pullback_momentum: Literal["none", "reset", "pullback"] = "none", lr: Positive | None = None,
              base_params: dict[str, Any] | None = None):
    """LookAhead (pytorch-optimizer) around any optimizer ``base`` built with ``base_params``.

    Every ``k`` steps of the base optimizer the slow weights move ``alpha`` of the way to the fast ones and the
    fast weights restart from there. ``lr`` is a shortcut for ``base_params.lr``.
    """
    from plugtrain.core.errors import PlugtrainError
    from plugtrain.plugins.optimizer_classes import Lookahead

    comp, kwargs = _base("LookAhead", base, base_params, lr)
    inner = _build(comp, kwargs, params=params, model=model)
    if hasattr(inner, "first_step") and hasattr(inner, "second_step"):
        raise PlugtrainError(f"optimizer LookAhead cannot wrap the two-step optimizer {base}: "
                             f"use {base} with base = 'LookAhead' instead")
    return Lookahead(inner, k=k, alpha=alpha, pullback_momentum=pullback_momentum)


def sam(params, model=None, base: str = "SGD", rho: NonNegative = 0.05, adaptive: bool = False,
        lr: Positive | None = None,
        base_params: dict[str, Any] | None = None):
    """SAM, sharpness-aware minimisation (pytorch-optimizer), around any optimizer ``base`` with ``base_params``.

    Two forward/backward passes per step: ``first_step`` perturbs the weights by ``rho`` along the gradient
    (scaled by |w| when ``adaptive``: ASAM), ``second_step`` restores them and steps the base optimizer with the
    gradient from the perturbed point. ``lr`` is a shortcut for ``base_params.lr``.
    """
    from plugtrain.core.errors import PlugtrainError
    from plugtrain.plugins.optimizer_classes import SAM

    comp, kwargs = _base("SAM", base, base_params, lr)
    probe = comp.factory.func if isinstance(comp.factory, functools.partial) else comp.factory
    if probe is sam:
        raise PlugtrainError("optimizer SAM cannot wrap SAM: pick another base")

    def make_base(param_groups, **base_kwargs):
        return _build(comp, base_kwargs, params=param_groups, model=model)

    return SAM(params, make_base, rho=rho, adaptive=adaptive, **kwargs)


def layer_decay_groups(model, layer_decay: float, weight_decay: float | None = None,
                       no_decay_norm_bias: bool = False) -> list[dict[str, Any]]:
    """``optimizer.layer_decay``: timm's ``param_groups_layer_decay`` groups of ``model`` (BEiT-style: the lr of a
    layer ``k`` blocks below the head is scaled by ``layer_decay ** k``; each group's ``lr_scale``). Frozen
    parameters get their group too (so that unfreezing needs no new one). ``weight_decay = None`` leaves the
    optimizer's own on the decayed groups."""
    from timm.optim import param_groups_layer_decay

    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        groups = param_groups_layer_decay(model, weight_decay=0.0 if weight_decay is None else weight_decay,
                                          weight_decay_exclude_1d=no_decay_norm_bias, layer_decay=layer_decay)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    for g in groups:
        if weight_decay is None and not (no_decay_norm_bias and g["params"][0].ndim <= 1):
            g.pop("weight_decay", None)
    return groups


def _first_doc_line(obj: Any) -> str:
    return (inspect.getdoc(obj) or "").strip().split("\n", 1)[0]


@hookimpl
def plugtrain_optimizers():
    import torch

    comps = []
    for name, obj in sorted(vars(torch.optim).items()):
        if name in UNSUPPORTED:
            continue
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            comps.append(Component(name, obj, summary=_first_doc_line(obj) or f"torch.optim.{name}"))
    comps += [
        Component("Madgrad", madgrad),
        Component("Ranger", ranger),
        Component("LookAhead", lookahead, summary="LookAhead (pytorch-optimizer) wrapping any optimizer `base`."),
        Component("SAM", sam, summary="Sharpness-aware minimisation (pytorch-optimizer) wrapping any optimizer "
                                      "`base`; two forward/backward passes per step.", fits={"passes": 2}),
        Component("layer_decay_groups", layer_decay_groups, roles=("layer_decay",),
                  summary="optimizer.layer_decay: timm's layer-wise lr decay parameter groups"),
    ]
    return comps
