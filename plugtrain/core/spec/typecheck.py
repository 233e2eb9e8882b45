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
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import datetime
import enum
import functools
import inspect
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
        return _convert(args[0], ns, depth + 1)
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
            return _from_ast(elts[0], ns, depth + 1)
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
        return T("literal", tuple(t.args[i] for i in keep), names=names)
    if t.kind in ("tuple", "list"):
        return T(t.kind, tuple(toml_view(a, top=False) for a in t.args), t.variadic, t.label)
    if t.kind == "dict":
        return T("dict", (toml_view(t.args[0], top=False), toml_view(t.args[1], top=False)))
    return t


def matches(value: Any, t: T) -> bool:
    """Whether the TOML value ``value`` fits ``t`` (use :func:`toml_view` first)."""
    k = t.kind
    if k == "any":
        return True
    if k == "never" or k == "none" or k == "opaque":
        return False
    if k == "bool":
        return isinstance(value, bool)
    if k == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if k == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if k == "str":
        return isinstance(value, str)
    if k == "literal":
        return any(_same_literal(value, v) for v in t.args)
    if k == "union":
        return any(matches(value, m) for m in t.args)
    if k == "tuple":
        if not isinstance(value, list):
            return False
        if t.variadic:
            return all(matches(x, t.args[0]) for x in value)
        return len(value) == len(t.args) and all(matches(x, a) for x, a in zip(value, t.args, strict=True))
    if k == "list":
        return isinstance(value, list) and all(matches(x, t.args[0]) for x in value)
    if k == "dict":
        return isinstance(value, dict) and all(matches(kk, t.args[0]) and matches(vv, t.args[1])
                                               for kk, vv in value.items())
    return True


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
    """A short human form of ``t`` (Python annotation style, literals in TOML style)."""
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
    """``expected X, got V (a kind)``, with a hint for common slips."""
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
    """The JSON Schema (draft 7) of the TOML values that fit ``t`` (use :func:`toml_view` first)."""
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
