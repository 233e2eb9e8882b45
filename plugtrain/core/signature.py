"""What a component's factory signature says: its user parameters (:class:`Param`), and annotations as text.

Read by the live registry from the factory, and stored by the component catalog (:mod:`plugtrain.core.catalog`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import attrs

_EMPTY = inspect.Parameter.empty


@attrs.frozen
class Param:
    """One user-settable parameter of a component, read from its factory's signature."""

    name: str
    default: Any = None
    annotation: Any = None  # the annotation object (None when absent)
    required: bool = False
    #: From the catalog: the checked type tree of the annotation, and what a run-directory path parameter writes.
    toml_type: Any = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    run_paths: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False, kw_only=True)

    @property
    def annotation_str(self) -> str:
        return _annotation_str(self.annotation)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default": _jsonable(self.default),
            "annotation": self.annotation_str,
            "required": self.required,
        }


def _signature_names(factory: Callable[..., Any]) -> set[str] | None:
    """Names the factory accepts as keywords, or None when it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names


def signature_params(factory: Callable[..., Any], context: Iterable[str] = ()) -> tuple[list[Param], bool]:
    """The user parameters of ``factory`` and whether it takes ``**kwargs``."""
    context = set(context)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return [], True
    try:
        hints = _type_hints(factory)
    except Exception:  # unresolvable string annotations: fall back to the raw ones
        hints = {}
    params, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL or p.name in context or p.name.startswith("_") or p.name == "self":
            continue
        if p.kind is p.POSITIONAL_ONLY:
            continue
        annotation = hints.get(p.name, None if p.annotation is _EMPTY else p.annotation)
        required = p.default is _EMPTY
        params.append(Param(p.name, None if required else p.default, annotation, required))
    return params, var_kw


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    import typing

    target = factory
    if isinstance(factory, functools.partial):
        target = factory.func
    if inspect.isclass(target):
        target = target.__init__
    return typing.get_type_hints(target, include_extras=True)  # keep Annotated[...] constraints


def _annotation_str(annotation: Any) -> str:
    """The annotation as ``plugtrain show`` prints it; ``Annotated`` constraints after their type (``float >= 0``,
    ``float in [0, 1)``, ``int | None`` with ``int > 0`` as ``int > 0 | None``)."""
    if annotation is None or annotation is _EMPTY:
        return ""
    if isinstance(annotation, str):
        return annotation
    if _has_annotated(annotation):
        return _annotated_str(annotation)
    if isinstance(annotation, type):
        return annotation.__name__
    return inspect.formatannotation(annotation).replace("typing.", "")


def _has_annotated(annotation: Any, depth: int = 0) -> bool:
    import typing

    if depth > 10:
        return False
    if typing.get_origin(annotation) is typing.Annotated:
        return True
    return any(_has_annotated(a, depth + 1) for a in typing.get_args(annotation) if not isinstance(a, (str, int)))


def _annotated_str(annotation: Any) -> str:
    import types
    import typing

    from plugtrain.core.spec.typecheck import _metadata_checks

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        base = _annotation_str(args[0])
        checks = _metadata_checks(annotation.__metadata__)
        text = checks.text() if checks is not None else ""
        if not text:
            return base
        return f"{base}, {text}" if text.startswith("inf/nan") else f"{base} {text}"
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return " | ".join("None" if a is type(None) else _annotation_str(a) for a in args)
    if origin is not None and args:
        name = getattr(origin, "__name__", None) or _annotation_str(origin)
        inner = ", ".join("..." if a is Ellipsis else _annotation_str(a) for a in args)
        return f"{name}[{inner}]"
    return _annotation_str(annotation)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
