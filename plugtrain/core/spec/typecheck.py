"""Parameter annotations as small type trees: check a TOML value against one, describe it, turn it into JSON Schema.

Annotations come from two places: the factories of components (real typing objects, or strings that
``typing.get_type_hints`` could not resolve, such as albumentations' ``'tuple[int, int]'`` or
``'Literal[cv2.INTER_NEAREST, ...]'``) and the attrs classes of the spec model (strings under
``from __future__ import annotations``). Strings are parsed with :mod:`ast` (never evaluated) and their names looked up
in the factory's module; a name that cannot be resolved makes the annotation *unknown*, and an unknown annotation
accepts anything.

A TOML value is a bool, int, float, str, date/time, list or table. A class that TOML cannot produce (``torch.Tensor``,
``Callable``) is *opaque*: inside a union it never matches (``float | torch.Tensor`` takes a float); standing alone it
accepts anything, because such factories usually convert what they get (``dtype: torch.dtype``).

Contracts on values
-------------------
``typing.Annotated`` metadata from `annotated-types <https://github.com/annotated-types/annotated-types>`_ narrows a
type: ``Annotated[float, Ge(0)]``, ``Gt``, ``Lt``, ``Le``, ``Interval(ge=0, lt=1)``, ``MultipleOf(8)``,
``MinLen(1)``, ``MaxLen(3)``, ``Len(1, 3)`` and ``Predicate(func)``; ``Literal[...]`` gives choices. The checks
travel on the node they annotate (:class:`Checks`); :func:`matches` enforces them, :func:`mismatch` says which one
failed (``must be > 0, got -1``), :func:`describe` shows them (``float >= 0``) and :func:`json_schema` writes them
(``minimum``, ``exclusiveMinimum``, ...). Other metadata is ignored, as annotated-types asks of its consumers.

Two rules hold for every value, annotated or not. A ``float`` must be finite: ``inf`` and ``nan`` (which TOML can
write) are refused unless the annotation carries :data:`AllowNonFinite` (``Annotated[float, AllowNonFinite]``).
An integer must fit in 64 bits, as TOML 1.0 demands of its decoders (``tomllib`` accepts any size): a larger one is
refused wherever it appears, even where anything is accepted.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import datetime
import enum
import functools
import inspect
import math
import sys
import types
import typing
from typing import Any

import attrs

# -- the type tree ---------------------------------------------------------------------------------------------------


@attrs.frozen
class T:
    """A node: ``kind`` is one of any, int, float, bool, str, none, literal, union, tuple, list, dict, opaque, never."""

    kind: str
    args: tuple[Any, ...] = ()  # literal values; union members; tuple items; (item,) for list; (key, value) for dict
    variadic: bool = False  # tuple[X, ...]
    label: str = ""  # for opaque / any: the name as written
    names: tuple[str, ...] = ()  # for literal: the names the values were written as (cv2.INTER_LINEAR), or ""
    checks: Checks | None = None  # the annotated-types constraints on this node (Annotated[float, Ge(0)])


class _AllowNonFinite:
    """The marker of :data:`AllowNonFinite`."""

    def __repr__(self) -> str:
        return "AllowNonFinite"

    def __reduce__(self) -> str:
        return "AllowNonFinite"


#: ``Annotated[float, AllowNonFinite]``: this float parameter takes ``inf``, ``-inf`` and ``nan`` (refused otherwise).
AllowNonFinite = _AllowNonFinite()

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@attrs.frozen
class Checks:
    """The constraints of one node: bounds (``lo``/``hi``, open or closed), ``multiple_of``, length bounds, whether
    non-finite floats are allowed, and annotated-types ``Predicate`` objects."""

    lo: float | None = None
    lo_open: bool = False
    hi: float | None = None
    hi_open: bool = False
    multiple_of: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    nonfinite: bool = False
    predicates: tuple[Any, ...] = ()

    def merge(self, other: Checks | None) -> Checks:
        """Both sets of constraints at once (the stricter bound wins)."""
        if other is None:
            return self
        lo, lo_open = _tighter(self.lo, self.lo_open, other.lo, other.lo_open, max)
        hi, hi_open = _tighter(self.hi, self.hi_open, other.hi, other.hi_open, min)
        return Checks(lo, lo_open, hi, hi_open,
                      other.multiple_of if other.multiple_of is not None else self.multiple_of,
                      _pick(self.min_len, other.min_len, max), _pick(self.max_len, other.max_len, min),
                      self.nonfinite or other.nonfinite, self.predicates + other.predicates)

    def numeric_problem(self, x: float, nonfinite_ok: bool) -> str | None:
        """What is wrong with the number ``x`` here (``"must be > 0"``), or None. ``nonfinite_ok``: whether ``inf``
        and ``nan`` pass where no bound refuses them."""
        if isinstance(x, float) and not math.isfinite(x) and not nonfinite_ok:
            return "must be finite (inf and nan are refused here)"
        bounded = self.lo is not None or self.hi is not None
        if isinstance(x, float) and math.isnan(x):
            return f"must be {self.bounds_text()}" if bounded else None
        if ((self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)))
                or (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))):
            return f"must be {self.bounds_text()}"
        if self.multiple_of is not None and not _is_multiple(x, self.multiple_of):
            return f"must be a multiple of {_num(self.multiple_of)}"
        return None

    def length_problem(self, n: int) -> str | None:
        if (self.min_len is not None and n < self.min_len) or (self.max_len is not None and n > self.max_len):
            return f"must have a length {self.length_text()}"
        return None

    def predicate_problem(self, value: Any) -> str | None:
        for pred in self.predicates:
            try:
                ok = bool(pred.func(value))
            except Exception:  # a predicate that cannot take the value refuses it
                ok = False
            if not ok:
                return f"must satisfy {_func_name(pred.func)}"
        return None

    def bounds_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return ""

    def length_text(self) -> str:
        if self.min_len is not None and self.max_len is not None:
            return f"of {self.min_len}" if self.min_len == self.max_len else f"in [{self.min_len}, {self.max_len}]"
        if self.min_len is not None:
            return f">= {self.min_len}"
        return f"<= {self.max_len}" if self.max_len is not None else ""

    def text(self) -> str:
        """The constraints as a user reads them: ``>= 0``, ``in [0, 1)``, ``multiple of 8``, ``length >= 1``."""
        parts = []
        if self.lo is not None or self.hi is not None:
            parts.append(self.bounds_text())
        if self.multiple_of is not None:
            parts.append(f"multiple of {_num(self.multiple_of)}")
        if self.min_len is not None or self.max_len is not None:
            parts.append(f"length {self.length_text()}")
        parts += [f"satisfying {_func_name(p.func)}" for p in self.predicates]
        if self.nonfinite:
            parts.append("inf/nan allowed")
        return ", ".join(parts)

    def json(self, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if kind in ("int", "float", "any"):
            if self.lo is not None:
                out["exclusiveMinimum" if self.lo_open else "minimum"] = self.lo
            if self.hi is not None:
                out["exclusiveMaximum" if self.hi_open else "maximum"] = self.hi
            if self.multiple_of is not None:
                out["multipleOf"] = self.multiple_of
        names = {"str": ("minLength", "maxLength"), "list": ("minItems", "maxItems"),
                 "tuple": ("minItems", "maxItems"), "dict": ("minProperties", "maxProperties")}.get(kind)
        if names:
            if self.min_len is not None:
                out[names[0]] = self.min_len
            if self.max_len is not None:
                out[names[1]] = self.max_len
        return out


def _tighter(a: float | None, a_open: bool, b: float | None, b_open: bool, pick: Any) -> tuple[float | None, bool]:
    if a is None:
        return b, b_open
    if b is None or a == pick(a, b) != b:
        return a, a_open
    if a == b:
        return a, a_open or b_open
    return b, b_open


def _pick(a: int | None, b: int | None, pick: Any) -> int | None:
    return b if a is None else a if b is None else pick(a, b)


def _is_multiple(x: float, m: float) -> bool:
    if m == 0:
        return x == 0
    if isinstance(x, int) and isinstance(m, int):
        return x % m == 0
    q = x / m
    return math.isfinite(q) and abs(q - round(q)) <= 1e-9 * max(1.0, abs(q))


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() and abs(x) < 1e15 else str(x)


def _func_name(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module in ("math", "cmath") else str(name)


def _metadata_checks(metadata: Any) -> Checks | None:
    """The :class:`Checks` of ``Annotated`` metadata (annotated-types objects and :data:`AllowNonFinite`); anything
    else is ignored."""
    try:
        import annotated_types as at
    except ImportError:  # pragma: no cover - a dependency of plugtrain
        at = None
    out: Checks | None = None

    def add(c: Checks) -> None:
        nonlocal out
        out = c if out is None else out.merge(c)

    for m in metadata:
        if m is AllowNonFinite or isinstance(m, _AllowNonFinite):
            add(Checks(nonfinite=True))
            continue
        if at is None:
            continue
        if isinstance(m, at.GroupedMetadata) and not isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)):
            sub = _metadata_checks(list(m))
            if sub is not None:
                add(sub)
        elif isinstance(m, at.Gt):
            add(Checks(lo=m.gt, lo_open=True))
        elif isinstance(m, at.Ge):
            add(Checks(lo=m.ge))
        elif isinstance(m, at.Lt):
            add(Checks(hi=m.lt, hi_open=True))
        elif isinstance(m, at.Le):
            add(Checks(hi=m.le))
        elif isinstance(m, at.MultipleOf):
            add(Checks(multiple_of=m.multiple_of))
        elif isinstance(m, at.MinLen):
            add(Checks(min_len=m.min_length))
        elif isinstance(m, at.MaxLen):
            add(Checks(max_len=m.max_length))
        elif isinstance(m, at.Predicate):
            if m.func is math.isfinite:  # IsFinite: what every float is here anyway
                continue
            add(Checks(predicates=(m,)))
    return out


def annotate(t: T, checks: Checks | None) -> T:
    """``t`` with ``checks`` added to it (for a union: to each member but ``None``)."""
    if checks is None:
        return t
    if t.kind == "union":
        return T("union", tuple(annotate(m, checks) for m in t.args))
    if t.kind in ("none", "never", "opaque"):
        return t
    return attrs.evolve(t, checks=checks.merge(t.checks) if t.checks is not None else checks)


ANY = T("any")
NEVER = T("never")
_PRIM = {int: "int", float: "float", bool: "bool", str: "str"}


def union(members: list[T]) -> T:
    flat: list[T] = []
    for m in members:
        for x in m.args if m.kind == "union" else (m,):
            if x not in flat:
                flat.append(x)
    if any(m.kind == "any" for m in flat):
        return ANY
    return flat[0] if len(flat) == 1 else T("union", tuple(flat))


# -- converting annotations ------------------------------------------------------------------------------------------


def from_annotation(annotation: Any, namespace: dict[str, Any] | None = None) -> T:
    """The type tree of ``annotation`` (a typing object or a string resolved in ``namespace``)."""
    if annotation is None or annotation is inspect.Parameter.empty:
        return ANY
    try:
        return _convert(annotation, namespace or {}, 0)
    except RecursionError:  # pragma: no cover - self-referential aliases
        return ANY


def _convert(a: Any, ns: dict[str, Any], depth: int) -> T:
    if depth > 20:
        return ANY
    if isinstance(a, str):
        try:
            node = ast.parse(a.strip(), mode="eval").body
        except SyntaxError:
            return T("any", label=a)
        return _from_ast(node, ns, depth + 1)
    if isinstance(a, typing.ForwardRef):
        return _convert(a.__forward_arg__, ns, depth + 1)
    if a is None or a is type(None):
        return T("none")
    if a is typing.Any or a is object:
        return ANY
    if isinstance(a, typing.TypeVar):
        return ANY
    origin = typing.get_origin(a)
    args = typing.get_args(a)
    if origin is typing.Union or (sys.version_info >= (3, 10) and isinstance(a, types.UnionType)):
        return union([_convert(x, ns, depth + 1) for x in args])
    if origin is typing.Literal:
        return T("literal", tuple(args))
    if origin is typing.Annotated:
        return annotate(_convert(args[0], ns, depth + 1), _metadata_checks(getattr(a, "__metadata__", ())))
    if origin is not None:
        return _generic(origin, [_convert(x, ns, depth + 1) if x is not Ellipsis else x for x in args])
    if getattr(a, "__supertype__", None) is not None:  # typing.NewType
        return _convert(a.__supertype__, ns, depth + 1)
    if isinstance(a, typing.TypeAliasType if hasattr(typing, "TypeAliasType") else ()):  # pragma: no cover - 3.12+
        return _convert(a.__value__, ns, depth + 1)
    if inspect.isclass(a):
        return _from_class(a)
    return T("any", label=repr(a))


def _from_class(cls: type) -> T:
    if issubclass(cls, enum.Enum):
        return T("literal", tuple(m.value for m in cls))
    if cls is bool:
        return T("bool")
    for py, name in _PRIM.items():
        if cls is py:
            return T(name)
    if cls in (list, set, frozenset) or cls is collections.abc.Sequence or cls is collections.abc.Iterable:
        return T("list", (ANY,))
    if cls is tuple:
        return T("tuple", (ANY,), variadic=True)
    if cls is dict or cls is collections.abc.Mapping:
        return T("dict", (ANY, ANY))
    if cls in (datetime.date, datetime.datetime, datetime.time):
        return T("opaque", label=cls.__name__)  # TOML has them, but no factory here wants them
    return T("opaque", label=cls.__name__)


_SEQUENCES = {list, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable,
              collections.abc.Collection, collections.abc.Set}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


def _generic(origin: Any, args: list[Any]) -> T:
    if origin is tuple:
        if not args:
            return T("tuple", (ANY,), variadic=True)
        if len(args) == 2 and args[1] is Ellipsis:
            return T("tuple", (args[0],), variadic=True)
        if args == [()]:
            return T("tuple", ())
        return T("tuple", tuple(a if isinstance(a, T) else ANY for a in args))
    if origin in _SEQUENCES:
        return T("list", (args[0] if args and isinstance(args[0], T) else ANY,))
    if origin in _MAPPINGS:
        k = args[0] if len(args) > 0 and isinstance(args[0], T) else ANY
        v = args[1] if len(args) > 1 and isinstance(args[1], T) else ANY
        return T("dict", (k, v))
    if origin is type or origin is collections.abc.Callable:
        return T("opaque", label=getattr(origin, "__name__", "Callable"))
    if inspect.isclass(origin):
        return _from_class(origin)
    return ANY


_TYPING_NAMES = {
    "Any": typing.Any, "Optional": typing.Optional, "Union": typing.Union, "Literal": typing.Literal,
    "List": list, "Tuple": tuple, "Dict": dict, "Set": set, "FrozenSet": frozenset, "Sequence": collections.abc.Sequence,
    "MutableSequence": collections.abc.MutableSequence, "Iterable": collections.abc.Iterable,
    "Collection": collections.abc.Collection, "Mapping": collections.abc.Mapping,
    "MutableMapping": collections.abc.MutableMapping, "Callable": collections.abc.Callable, "Type": type,
    "Annotated": typing.Annotated,
}
_MISSING = object()


def _lookup(name: str, ns: dict[str, Any]) -> Any:
    if name in ns:
        return ns[name]
    if name in _TYPING_NAMES:
        return _TYPING_NAMES[name]
    return getattr(builtins, name, _MISSING)


def _resolve_value(node: ast.AST, ns: dict[str, Any]) -> Any:
    """The object a Name / Attribute / Constant node refers to, or _MISSING."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _lookup(node.id, ns)
    if isinstance(node, ast.Attribute):
        base = _resolve_value(node.value, ns)
        if base is _MISSING:
            return _MISSING
        return getattr(base, node.attr, _MISSING)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    return _MISSING


def _constant(node: ast.AST, ns: dict[str, Any]) -> Any:
    """A constant argument of a metadata call: a literal, a negative literal or a name (``math.inf``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _constant(node.operand, ns)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
        return _MISSING
    return _resolve_value(node, ns)


def _metadata_value(node: ast.AST, ns: dict[str, Any]) -> Any:
    """An ``Annotated`` metadata item written in a string annotation: a name (``AllowNonFinite``) or a call of an
    annotated-types class with constant arguments (``Ge(0)``, ``Interval(ge=0, lt=1)``). Nothing else is evaluated
    (a call of anything but an annotated-types class is ignored)."""
    if not isinstance(node, ast.Call):
        return _resolve_value(node, ns)
    cls = _resolve_value(node.func, ns)
    if not (inspect.isclass(cls) and getattr(cls, "__module__", "") == "annotated_types"):
        return _MISSING
    args = [_constant(a, ns) for a in node.args]
    kwargs = {k.arg: _constant(k.value, ns) for k in node.keywords if k.arg}
    if any(a is _MISSING for a in (*args, *kwargs.values())) or len(kwargs) != len(node.keywords):
        return _MISSING
    try:
        return cls(*args, **kwargs)
    except Exception:
        return _MISSING


def _from_ast(node: ast.AST, ns: dict[str, Any], depth: int) -> T:
    label = ast.unparse(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return union([_from_ast(node.left, ns, depth + 1), _from_ast(node.right, ns, depth + 1)])
    if isinstance(node, ast.Constant):
        if node.value is None:
            return T("none")
        if isinstance(node.value, str):  # a quoted forward reference inside a string annotation
            return _convert(node.value, ns, depth + 1)
        return T("any", label=label)
    if isinstance(node, (ast.Name, ast.Attribute)):
        obj = _resolve_value(node, ns)
        if obj is _MISSING:
            return T("any", label=label)
        return _convert(obj, ns, depth + 1)
    if isinstance(node, ast.Subscript):
        origin = _resolve_value(node.value, ns)
        if origin is _MISSING:
            return T("any", label=label)
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin is typing.Literal:
            values, names = [], []
            for e in elts:
                v = _resolve_value(e, ns)
                if v is _MISSING:
                    return T("any", label=label)
                values.append(v.value if isinstance(v, enum.Enum) else v)
                names.append(ast.unparse(e) if isinstance(e, (ast.Name, ast.Attribute)) else "")
            return T("literal", tuple(values), names=tuple(names) if any(names) else ())
        if origin is typing.Optional:
            return union([_from_ast(elts[0], ns, depth + 1), T("none")])
        if origin is typing.Union:
            return union([_from_ast(e, ns, depth + 1) for e in elts])
        if origin is typing.Annotated:
            metadata = [m for m in (_metadata_value(e, ns) for e in elts[1:]) if m is not _MISSING]
            return annotate(_from_ast(elts[0], ns, depth + 1), _metadata_checks(metadata))
        if origin is collections.abc.Callable or origin is type:
            return T("opaque", label=label)
        args: list[Any] = []
        for e in elts:
            if isinstance(e, ast.Constant) and e.value is Ellipsis:
                args.append(Ellipsis)
            elif isinstance(e, ast.List):  # Callable[[...], ...]
                args.append(ANY)
            else:
                args.append(_from_ast(e, ns, depth + 1))
        base = typing.get_origin(origin) or origin
        if inspect.isclass(base) or base in _SEQUENCES or base in _MAPPINGS or base is tuple:
            return _generic(base, args)
        return T("any", label=label)
    return T("any", label=label)


def factory_namespace(factory: Any) -> dict[str, Any]:
    """The globals a factory's string annotations were written against (its defining module first)."""
    target = factory
    while isinstance(target, functools.partial):
        target = target.func
    modules = []
    if inspect.isclass(target):
        for klass in target.__mro__:  # the class that really defines __init__ holds the annotations
            if "__init__" in klass.__dict__:
                modules.append(klass.__module__)
                init = inspect.unwrap(klass.__dict__["__init__"])
                modules.append(getattr(init, "__module__", None))
                break
        modules.append(target.__module__)
    else:
        target = inspect.unwrap(target)
        modules.append(getattr(target, "__module__", None))
    ns: dict[str, Any] = {}
    for name in modules:
        module = sys.modules.get(name or "")
        if module is not None:
            for k, v in vars(module).items():
                ns.setdefault(k, v)
    return ns


# -- checking values -------------------------------------------------------------------------------------------------


def toml_view(t: T, top: bool = True) -> T:
    """``t`` with what TOML cannot produce taken out (``None``, opaque classes); see the module docstring."""
    if t.kind == "opaque":
        return ANY if top else NEVER
    if t.kind == "union":
        members = [toml_view(m, top=False) for m in t.args if m.kind != "none"]
        members = [m for m in members if m.kind != "never"]
        if not members:
            if top and all(m.kind == "opaque" for m in t.args):
                return ANY
            return NEVER
        return union(members)
    if t.kind == "none":
        return NEVER
    if t.kind == "literal":
        keep = [i for i, v in enumerate(t.args) if v is not None]
        if not keep:
            return NEVER
        names = tuple(t.names[i] for i in keep) if t.names else ()
        return T("literal", tuple(t.args[i] for i in keep), names=names, checks=t.checks)
    if t.kind in ("tuple", "list"):
        return T(t.kind, tuple(toml_view(a, top=False) for a in t.args), t.variadic, t.label, checks=t.checks)
    if t.kind == "dict":
        return T("dict", (toml_view(t.args[0], top=False), toml_view(t.args[1], top=False)), checks=t.checks)
    return t


def matches(value: Any, t: T) -> bool:
    """Whether the TOML value ``value`` fits ``t`` (use :func:`toml_view` first): its type, its constraints, finite
    floats and 64-bit integers (see the module docstring)."""
    return _fits(value, t, True)


def _big_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX


def _find_big_int(value: Any) -> int | None:
    """The first integer beyond 64 bits anywhere in ``value``, or None."""
    if _big_int(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for x in items:
        found = _find_big_int(x)
        if found is not None:
            return found
    return None


def _problem(value: Any, t: T) -> str | None:
    """What is wrong with ``value`` under ``t``'s own rules, given that its type fits (``"must be > 0"``), or None.

    For numbers: 64 bits, finiteness (a ``float`` node refuses ``inf``/``nan`` unless :data:`AllowNonFinite`), the
    bounds and ``multiple_of``; for strings, arrays and tables: the length; then any ``Predicate``."""
    checks = t.checks
    if isinstance(value, (int, float)) and not isinstance(value, bool) and t.kind in ("int", "float", "any"):
        if _big_int(value):
            return f"does not fit in 64 bits: TOML integers go from {INT64_MIN} to {INT64_MAX}"
        nonfinite_ok = t.kind != "float" or (checks is not None and checks.nonfinite)
        if checks is None:
            return None if nonfinite_ok or math.isfinite(value) else "must be finite (inf and nan are refused here)"
        why = checks.numeric_problem(value, nonfinite_ok)
        if why:
            return why
    elif checks is not None and isinstance(value, (str, list, dict)):
        why = checks.length_problem(len(value))
        if why:
            return why
    return checks.predicate_problem(value) if checks is not None and checks.predicates else None


def _fits(value: Any, t: T, strict: bool) -> bool:
    """``matches`` (``strict``), or whether only the type fits (constraints, finiteness and int size ignored)."""
    if strict and _big_int(value):
        return False
    k = t.kind
    if k == "any":
        if not strict:
            return True
        return _find_big_int(value) is None and (t.checks is None or _problem(value, t) is None)
    if k == "never" or k == "none" or k == "opaque":
        return False
    if k == "bool":
        ok = isinstance(value, bool)
    elif k == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif k == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif k == "str":
        ok = isinstance(value, str)
    elif k == "literal":
        ok = any(_same_literal(value, v) for v in t.args)
    elif k == "union":
        return any(_fits(value, m, strict) for m in t.args)
    elif k == "tuple":
        if not isinstance(value, list):
            return False
        if t.variadic:
            ok = all(_fits(x, t.args[0], strict) for x in value)
        else:
            ok = len(value) == len(t.args) and all(_fits(x, a, strict) for x, a in zip(value, t.args, strict=True))
    elif k == "list":
        ok = isinstance(value, list) and all(_fits(x, t.args[0], strict) for x in value)
    elif k == "dict":
        ok = isinstance(value, dict) and all(_fits(kk, t.args[0], strict) and _fits(vv, t.args[1], strict)
                                             for kk, vv in value.items())
    else:
        return True
    return ok and (not strict or _problem(value, t) is None)


def explain(value: Any, t: T) -> str | None:
    """Why ``value``, whose type fits ``t``, breaks one of its rules: ``"must be > 0, got -1"``; None when the type
    itself does not fit (or nothing is wrong)."""
    big = _find_big_int(value)
    if big is not None:
        shown = str(big) if len(str(big)) <= 30 else str(big)[:27] + "..."
        if big is value:
            return f"the integer {shown} does not fit in 64 bits: TOML integers go from {INT64_MIN} to {INT64_MAX}"
        return (f"holds the integer {shown}, which does not fit in 64 bits: TOML integers go from {INT64_MIN} to "
                f"{INT64_MAX}")
    if not _fits(value, t, False) or _fits(value, t, True):
        return None
    return _explain(value, t)


def _explain(value: Any, t: T) -> str:
    """``value``'s type fits ``t`` but a rule does not: say which (recursively, naming the item)."""
    if t.kind == "union":
        fitting = [m for m in t.args if _fits(value, m, False)]
        others = [m for m in t.args if m not in fitting]
        why = _explain(value, fitting[0])
        if others:
            alt = describe(others[0]) if len(others) == 1 else describe(T("union", tuple(others)))
            why = why.replace(", got ", f" (or {alt}), got ", 1) if ", got " in why else why
        return why
    own = _problem(value, t)
    if own:
        return f"{own}, got {_shown(value)}"
    if t.kind in ("tuple", "list"):
        for i, x in enumerate(value):
            item = t.args[0] if t.kind == "list" or t.variadic else t.args[i]
            if not _fits(x, item, True):
                return f"item {i + 1} {_explain(x, item)}"
    if t.kind == "dict":
        for kk, vv in value.items():
            if not _fits(vv, t.args[1], True):
                return f"key {toml_literal(kk)} {_explain(vv, t.args[1])}"
    return f"is not allowed here, got {_shown(value)}"  # pragma: no cover - every failing rule is named above


def _shown(value: Any) -> str:
    shown = toml_literal(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _same_literal(value: Any, lit: Any) -> bool:
    if isinstance(lit, enum.Enum):
        lit = lit.value
    if isinstance(value, bool) or isinstance(lit, bool):
        return type(value) is type(lit) and value == lit
    if isinstance(lit, (int, float)) and isinstance(value, (int, float)):
        return value == lit and (isinstance(lit, float) or isinstance(value, int))
    return type(value) is type(lit) and value == lit


# -- describing ------------------------------------------------------------------------------------------------------


def describe(t: T) -> str:
    """A short human form of ``t`` (Python annotation style, literals in TOML style; constraints after the type:
    ``float >= 0``)."""
    if t.checks is not None and t.kind != "literal":
        base, text = describe(attrs.evolve(t, checks=None)), t.checks.text()
        if not text:
            return base
        return f"{base}, {text}" if text.startswith("inf/nan") else f"{base} {text}"
    k = t.kind
    if k in ("int", "float", "bool", "str"):
        return k
    if k == "any":
        return t.label or "any"
    if k == "none":
        return "None"
    if k == "never":
        return "nothing a TOML spec can express"
    if k == "opaque":
        return t.label
    if k == "literal":
        names = t.names or ("",) * len(t.args)
        shown = (toml_literal(v) + (f" ({n})" if n else "") for v, n in zip(t.args, names, strict=False))
        return "one of " + ", ".join(shown)
    if k == "union":
        if all(m.kind == "literal" for m in t.args):
            return describe(T("literal", tuple(v for m in t.args for v in m.args)))  # names dropped: rare
        return " | ".join(describe(m) if m.kind != "literal" else f"({describe(m)})" for m in t.args)
    if k == "tuple":
        if t.variadic:
            return f"tuple[{describe(t.args[0])}, ...]"
        return f"tuple[{', '.join(describe(a) for a in t.args)}]"
    if k == "list":
        return f"list[{describe(t.args[0])}]"
    if k == "dict":
        return f"table of {describe(t.args[1])}"
    return k


def toml_literal(v: Any) -> str:
    """``v`` written as a TOML value (for messages)."""
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        import json

        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_literal(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    return repr(v)


def value_kind(v: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"


def mismatch(value: Any, t: T) -> str:
    """``expected X, got V (a kind)``, with a hint for common slips; for a value of the right type that breaks a
    rule, what the rule says: ``must be > 0, got -1`` (:func:`explain`)."""
    why = explain(value, t)
    if why:
        return why
    shown = toml_literal(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = f"expected {describe(t)}, got {shown} ({value_kind(value)})"
    if isinstance(value, str) and t.kind != "str":
        try:
            float(value)
            msg += "; write numbers without quotes"
        except ValueError:
            if value.lower() in ("true", "false"):
                msg += "; write booleans without quotes: true / false"
    if isinstance(value, bool) and t.kind in ("int", "float"):
        msg += "; a boolean is not a number"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and t.kind == "tuple" and not t.variadic:
        msg += f"; write an array of {len(t.args)}, e.g. {toml_literal([value] * len(t.args))}"
    return msg


# -- JSON Schema -----------------------------------------------------------------------------------------------------


def json_schema(t: T) -> dict[str, Any] | bool:
    """The JSON Schema (draft 7) of the TOML values that fit ``t`` (use :func:`toml_view` first), constraints
    included (``minimum``, ``exclusiveMaximum``, ``multipleOf``, ``minLength``, ``minItems``, ...)."""
    schema = _json_schema(t)
    if t.checks is not None and isinstance(schema, dict) and t.kind != "union":
        extra = t.checks.json(t.kind)
        if extra:
            schema = {**schema, **extra}
    return schema


def _json_schema(t: T) -> dict[str, Any] | bool:
    k = t.kind
    if k == "any":
        return {}
    if k in ("never", "none", "opaque"):
        return False
    if k == "bool":
        return {"type": "boolean"}
    if k == "int":
        return {"type": "integer"}
    if k == "float":
        return {"type": "number"}
    if k == "str":
        return {"type": "string"}
    if k == "literal":
        vals = [v.value if isinstance(v, enum.Enum) else v for v in t.args]
        vals = [v for v in vals if isinstance(v, (bool, int, float, str))]
        return {"enum": vals} if vals else False
    if k == "union":
        parts = [json_schema(m) for m in t.args]
        parts = [p for p in parts if p is not False]
        if not parts:
            return False
        if any(p == {} for p in parts):
            return {}
        # merge plain enums so that editors offer them together
        enums = [p for p in parts if set(p) == {"enum"}]
        rest = [p for p in parts if set(p) != {"enum"}]
        if len(enums) > 1:
            rest.append({"enum": [v for p in enums for v in p["enum"]]})
        else:
            rest.extend(enums)
        return rest[0] if len(rest) == 1 else {"anyOf": rest}
    if k == "tuple":
        if t.variadic:
            return {"type": "array", "items": json_schema(t.args[0])}
        return {"type": "array", "items": [json_schema(a) for a in t.args], "minItems": len(t.args),
                "maxItems": len(t.args)}
    if k == "list":
        return {"type": "array", "items": json_schema(t.args[0])}
    if k == "dict":
        return {"type": "object", "additionalProperties": json_schema(t.args[1])}
    return {}
