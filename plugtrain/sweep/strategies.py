"""The sweep's samplers and pruners, declared once: each one's name, what it does, its options (type, lower bound,
Optuna default, meaning) and how the Optuna object is built from them.

:mod:`.space` checks ``[sweep] sampler`` / ``pruner`` against :data:`SAMPLERS` / :data:`PRUNERS` (names, options,
types and bounds, its messages listing these), :mod:`.study` builds them with :meth:`Strategy.build`, and
:func:`describe` is their text for help and docs. Optuna is passed in, never imported here (the sweep file is
checked without it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Option:
    """One option of a sampler or pruner: ``kind`` is ``"int"`` (``>= minimum``), ``"int_or_auto"`` (that, or the
    string ``"auto"``) or ``"bool"``; ``keyword`` is Optuna's name for it; ``default`` is used when the sweep file
    leaves it out (``None``: Optuna's own default)."""

    name: str
    kind: str
    keyword: str
    description: str
    minimum: int = 0
    default: Any = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option (the message after ``[sweep] KEY: ``), or ``None``."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"{self.name} must be true or false"
        if self.kind == "int_or_auto" and value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            return f"{self.name} must be a non-negative integer" + (f" (>= {self.minimum})" if self.minimum else "")
        return None


@attrs.frozen
class Strategy:
    """A sampler or pruner: its name, what it does, its options, whether it needs a finite search space (grid), and
    ``factory(optuna, keywords, context)`` building the Optuna object (``context``: ``seed`` and ``grid``, the
    search space's values by parameter)."""

    name: str
    description: str
    factory: Callable[[Any, dict[str, Any], Mapping[str, Any]], Any]
    options: tuple[Option, ...] = ()
    finite_space: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def build(self, optuna: Any, options: Mapping[str, Any], **context: Any) -> Any:
        """The Optuna sampler / pruner for the (checked) ``options`` of the sweep file."""
        keywords = {}
        for o in self.options:
            value = options.get(o.name, o.default)
            if value is not None:
                keywords[o.keyword] = value
        return self.factory(optuna, keywords, context)


def _by_name(*strategies: Strategy) -> dict[str, Strategy]:
    return {s.name: s for s in strategies}


#: ``[sweep] sampler``: by name, the default first.
SAMPLERS: dict[str, Strategy] = _by_name(
    Strategy("tpe", "Optuna's TPE (Tree-structured Parzen Estimator), constant liar for parallel workers",
             lambda optuna, kw, ctx: optuna.samplers.TPESampler(seed=ctx.get("seed"), constant_liar=True, **kw),
             (Option("startup_trials", "int", "n_startup_trials", "random trials before TPE starts modelling "
                                                                  "(Optuna's default 10)"),
              Option("multivariate", "bool", "multivariate", "model the parameters jointly (Optuna's default "
                                                              "false)"))),
    Strategy("random", "independent uniform draws from the search space",
             lambda optuna, kw, ctx: optuna.samplers.RandomSampler(seed=ctx.get("seed"), **kw)),
    Strategy("grid", "every combination of the search space's values once (each parameter a choice or a stepped "
                     "range)",
             lambda optuna, kw, ctx: optuna.samplers.GridSampler(ctx["grid"], seed=ctx.get("seed"), **kw),
             finite_space=True),
)

#: ``[sweep] pruner``: by name, the default first.
PRUNERS: dict[str, Strategy] = _by_name(
    Strategy("median", "stop a trial whose objective is worse than the median of earlier trials at the same epoch",
             lambda optuna, kw, ctx: optuna.pruners.MedianPruner(**kw),
             (Option("startup_trials", "int", "n_startup_trials", "trials completed before any is pruned", default=5),
              Option("warmup_epochs", "int", "n_warmup_steps", "epochs of each trial never pruned", default=0),
              Option("interval", "int", "interval_steps", "epochs between pruning checks", minimum=1, default=1))),
    Strategy("successive_halving", "asynchronous successive halving: keep the best 1/reduction_factor at each rung",
             lambda optuna, kw, ctx: optuna.pruners.SuccessiveHalvingPruner(**kw),
             (Option("min_resource", "int_or_auto", "min_resource", "epochs before the first rung, or \"auto\"",
                     minimum=1, default="auto"),
              Option("reduction_factor", "int", "reduction_factor", "1/fraction of trials promoted per rung",
                     minimum=2, default=4),
              Option("min_early_stopping_rate", "int", "min_early_stopping_rate", "rungs never pruned", default=0))),
    Strategy("none", "never prune: every trial trains all its epochs",
             lambda optuna, kw, ctx: optuna.pruners.NopPruner()),
)

#: Each ``[sweep]`` key declared here, with its declarations.
KINDS: dict[str, dict[str, Strategy]] = {"sampler": SAMPLERS, "pruner": PRUNERS}


def describe(key: str) -> str:
    """``[sweep] sampler`` / ``pruner``'s choices as text: a line per strategy, an indented line per option."""
    lines = []
    for s in KINDS[key].values():
        lines.append(f"{s.name}: {s.description}")
        for o in s.options:
            default = f"; default {o.default!r}" if o.default is not None else ""
            bound = f" >= {o.minimum}" if o.kind != "bool" and o.minimum else ""
            kind = {"int": "integer", "int_or_auto": "integer or \"auto\"", "bool": "true / false"}[o.kind]
            lines.append(f"    {o.name} ({kind}{bound}{default}): {o.description}")
    return "\n".join(lines)
