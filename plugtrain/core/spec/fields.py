"""What the spec checks share: the range rules, the model's section fields and their TOML types, and how a place
or a value is written in a message.

:mod:`plugtrain.core.spec.validate` (and :mod:`plugtrain.core.spec.schema`, through it) reads these; they live here so
that the checks split over :mod:`~plugtrain.core.spec.components_check` and :mod:`~plugtrain.core.spec.rules` can too.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from plugtrain.core.spec import model
from plugtrain.core.spec.tomlpos import format_path
from plugtrain.core.spec.typecheck import T, from_annotation, toml_view

# -- range rules -----------------------------------------------------------------------------------------------------


@attrs.frozen
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):  # a range means a finite number: nan and inf are refused
            return False
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.lo is not None:
            out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
        if self.hi is not None:
            out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)

#: Range rules for component parameters, by kind and parameter name (any component of the kind that has it).
PARAM_RANGES: dict[str, dict[str, Range]] = {
    "optimizers": {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "momentum": NON_NEGATIVE, "eps": POSITIVE,
                   "dampening": NON_NEGATIVE},
    "augmentations": {"p": PROBABILITY},
    "losses": {"label_smoothing": PROBABILITY, "margin": NON_NEGATIVE},
    "backbones": {"drop_rate": FRACTION, "drop_path_rate": FRACTION, "in_chans": Range(1)},
    "datasets": {"val_fraction": Range(0, 1, lo_open=True, hi_open=True),
                 "test_fraction": Range(0, 1, hi_open=True), "cache_max_gb": POSITIVE, "num_classes": Range(1),
                 "upscale": Range(1)},
    "schedulers": {"warmup_epochs": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "eta_min": NON_NEGATIVE,
                   "gamma": POSITIVE, "step_size": Range(1), "patience": NON_NEGATIVE, "T_max": Range(1)},
    "callbacks": {"patience": Range(1), "min_delta": NON_NEGATIVE},
    "loggers": {"flush_secs": POSITIVE, "digits": NON_NEGATIVE, "connect_timeout": POSITIVE},
    "metrics": {"top_k": Range(1), "max_points": Range(1)},
}

#: Ranges of the model's own section fields, from their attrs validators (``_positive`` / ``_non_negative``).
_VALIDATOR_RANGES = {"_positive": POSITIVE, "_non_negative": NON_NEGATIVE, "_decay": Range(0, 1, lo_open=True)}


def field_range(field: attrs.Attribute) -> Range | None:
    """The range an attrs field's validator enforces, when it is one of the model's range validators."""
    validator = field.validator
    name = getattr(validator, "__name__", "")
    if name in _VALIDATOR_RANGES:
        return _VALIDATOR_RANGES[name]
    if isinstance(validator, model._Between):
        return Range(validator.lo, validator.hi)
    return None


# -- the model's own fields ------------------------------------------------------------------------------------------

_MODEL_NS = vars(model)
_COMPONENT_FIELDS = {"params", "transforms"}


def section_fields(cls: type) -> dict[str, attrs.Attribute]:
    """The user-facing fields of a section class (``params`` and ``transforms`` are not keys)."""
    return {a.name: a for a in attrs.fields(cls) if a.name not in _COMPONENT_FIELDS}


def field_type(field: attrs.Attribute) -> T:
    return toml_view(from_annotation(field.type, _MODEL_NS))


# -- message text ----------------------------------------------------------------------------------------------------


def _where(path: tuple) -> str:
    return f"[{path[0]}]" if len(path) == 1 else format_path(path)


def describe_value(value: Any) -> str:
    from plugtrain.core.spec.typecheck import toml_literal, value_kind

    shown = toml_literal(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({value_kind(value)})"

