"""The JSON Schema (draft 7) of a run spec, built from the spec model and every registered component's signature.

``plugtrain schema > build/plugtrain.schema.json`` and an editor (Taplo / Even Better TOML, through ``.taplo.toml``
or a ``#:schema`` comment) completes and checks specs as they are typed; CI runs ``taplo check`` with it on every
file in ``specs/``. Plugins are included: their components are in the enums, their parameters in the properties.

Shape:

* each component kind is a definition: ``name`` (``dataset`` in ``[data]``) is an enum of the registered names; for
  each group of components that share one parameter list, an ``if name in [...] then {properties, no others}``
  validates the parameters (types and ``Annotated`` constraints from the annotations, plus the spec's range rules on
  well-known names; where both bound a value, the stricter bound holds). All 1,300+ timm
  backbones share one signature, hence one group.
* augmentation compositions take ``transforms``: an array of the augmentation definition itself (any depth).
* a spec with ``extends`` may leave sections, names and required parameters to the file it extends, so what is
  *required* lives apart, in the ``complete`` definition, applied only when ``extends`` is absent.

TOML has no null: ``None`` is never a value here; a parameter whose annotation TOML cannot express is left out (and
therefore rejected), exactly as ``plugtrain check`` does.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from plugtrain.core.hookspecs import CONTEXT, SINGULAR
from plugtrain.core.spec import model
from plugtrain.core.spec.model import REQUIRED_SECTIONS, SECTIONS
from plugtrain.core.spec.typecheck import describe, factory_namespace, from_annotation, json_schema, toml_view
from plugtrain.core.spec.validate import PARAM_RANGES, Range, field_range, field_type, section_fields

DRAFT = "http://json-schema.org/draft-07/schema#"
_ARRAY_SECTIONS = ("loggers", "metrics", "callbacks")


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v if not (isinstance(v, float) and v != v) else None
    if isinstance(v, (list, tuple)):
        items = [_jsonable(x) for x in v]
        return None if any(x is None for x in items) else items
    if isinstance(v, dict):
        items = {str(k): _jsonable(x) for k, x in v.items()}
        return None if any(x is None for x in items.values()) else items
    return None


_STRICTER = {"minimum": max, "exclusiveMinimum": max, "maximum": min, "exclusiveMaximum": min}


def _with_range(schema: dict[str, Any] | bool, rng: Range | None) -> dict[str, Any] | bool:
    """``schema`` narrowed by a range rule: where the annotation already bounds the value (``Annotated[float,
    Ge(0)]``) both hold, so the stricter bound of each kind is kept."""
    if rng is None or schema is False:
        return schema
    out = dict(schema) if isinstance(schema, dict) else {}
    for key, bound in rng.json().items():
        out[key] = _STRICTER[key](out[key], bound) if key in out else bound
    return out


def _field_schema(f: attrs.Attribute) -> dict[str, Any] | bool:
    t = field_type(f)
    schema = _with_range(json_schema(t), field_range(f))
    if isinstance(schema, dict):
        schema = dict(schema)
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else None
        default = _jsonable(default) if default is not attrs.NOTHING else None
        if default is not None:
            schema["default"] = default
        schema.setdefault("description", describe(t))
    return schema


class _Builder:
    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.definitions: dict[str, Any] = {}
        self._counts: dict[str, dict[str, int]] = {}

    # -- plain sections ----------------------------------------------------------------------------------------------
    def plain(self, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        props = {k: _field_schema(f) for k, f in section_fields(cls).items() if k not in skip}
        return {"type": "object", "properties": props, "additionalProperties": False,
                "description": (cls.__doc__ or cls.__name__).strip().split("\n")[0]}

    # -- components --------------------------------------------------------------------------------------------------
    def spec_name(self, kind: str, comp: Any) -> str:
        """The name a spec gives ``comp``: its own, or ``PLUGIN:name`` where plugins clash on the name (plain
        ``name`` is then ambiguous, and ``plugtrain check`` rejects it)."""
        if kind not in self._counts:
            counts: dict[str, int] = {}
            for c in self.registry.components(kind):
                counts[c.name] = counts.get(c.name, 0) + 1
            self._counts[kind] = counts
        return comp.qualified_name if self._counts[kind][comp.name] > 1 else comp.name

    def names(self, kind: str) -> list[str]:
        comps = self.registry.components(kind)
        unique = sorted({c.name for c in comps if self.spec_name(kind, c) == c.name}, key=str.lower)
        return unique + sorted(c.qualified_name for c in comps if self.spec_name(kind, c) != c.name)

    def param_schema(self, kind: str, comp: Any, p: Any) -> dict[str, Any] | bool:
        if kind == "augmentations" and p.name == "transforms":
            return {"type": "array", "items": {"$ref": "#/definitions/augmentation"},
                    "description": "the transforms this composition applies"}
        t = toml_view(from_annotation(p.annotation, factory_namespace(comp.factory)))
        schema = _with_range(json_schema(t), PARAM_RANGES.get(kind, {}).get(p.name))
        if isinstance(schema, dict):
            schema = dict(schema)
            schema["description"] = describe(t) + ("" if p.required else f" (default {_default_text(p.default)})")
            default = None if p.required else _jsonable(p.default)
            if default is not None:
                schema["default"] = default
        return schema

    def groups(self, kind: str, name_key: str, own: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        """``allOf`` entries per group of same-signature components: (structure, requirements)."""
        by_then: dict[str, tuple[dict, list[str]]] = {}
        by_req: dict[str, tuple[list[str], list[str]]] = {}
        context = CONTEXT.get(kind, frozenset())
        for comp in self.registry.components(kind):
            props: dict[str, Any] = {name_key: True, **{k: True for k in own}}
            required: list[str] = []
            for p in comp.params:
                if p.name in own or p.name in context:
                    continue
                s = self.param_schema(kind, comp, p)
                if s is False:
                    continue
                props[p.name] = s
                if p.required:
                    required.append(p.name)
            then: dict[str, Any] = {"properties": props}
            if not comp.accepts_any_kwargs:
                then["additionalProperties"] = False
            key = json.dumps(then, sort_keys=True, default=repr)
            name = self.spec_name(kind, comp)
            by_then.setdefault(key, (then, []))[1].append(name)
            if required:
                by_req.setdefault(json.dumps(required), (required, []))[1].append(name)

        def cond(names: list[str]) -> dict[str, Any]:
            return {"properties": {name_key: {"enum": sorted(set(names))}}, "required": [name_key]}

        structure = [{"if": cond(names), "then": then} for then, names in by_then.values()]
        requirements = [{"if": cond(names), "then": {"required": req}} for req, names in by_req.values()]
        return structure, requirements

    def component(self, kind: str, cls: type, name_key: str = "name") -> tuple[dict[str, Any], dict[str, Any]]:
        """(structure, requirements) schemas of a table naming a component of ``kind``."""
        own_fields = {k: f for k, f in section_fields(cls).items() if k not in ("name", name_key)}
        own: dict[str, Any] = {}
        for k, f in own_fields.items():
            if cls is model.LossSection and k == "optimizer":
                own[k] = {"$ref": "#/definitions/optimizer"}
            else:
                own[k] = _field_schema(f)
        singular = SINGULAR[kind]
        name_schema = {"type": "string", "enum": self.names(kind),
                       "description": f"the {singular} (`plugtrain list {kind}`)"}
        structure, requirements = self.groups(kind, name_key, own)
        schema: dict[str, Any] = {
            "type": "object",
            "description": f"a {singular}: {name_key} names it, its parameters sit beside "
                           f"(`plugtrain show {kind} NAME`)",
            "properties": {name_key: name_schema, **own},
        }
        if structure:
            schema["allOf"] = structure
        req: dict[str, Any] = {"required": [name_key, *[k for k, f in own_fields.items()
                                                         if f.default is attrs.NOTHING]]}
        if requirements:
            req["allOf"] = requirements
        return schema, req

    # -- the document ------------------------------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        defs = self.definitions
        props: dict[str, Any] = {
            "extends": {"type": "string", "description": "a spec file this one builds on, relative to this file"},
        }
        complete: dict[str, Any] = {"required": list(REQUIRED_SECTIONS), "properties": {}}
        aug, aug_req = self.component("augmentations", model.AugmentationSpec)
        aug_req.setdefault("properties", {})["transforms"] = {"items": {"$ref": "#/definitions/augmentation_complete"}}
        defs["augmentation"], defs["augmentation_complete"] = aug, aug_req
        defs["optimizer"], defs["optimizer_complete"] = self.component("optimizers", model.ComponentSpec)
        for sec, (cls, kind) in SECTIONS.items():
            if sec in _ARRAY_SECTIONS:
                item, item_req = self.component(kind, cls)
                defs[kind], defs[f"{kind}_complete"] = item, item_req
                props[sec] = {"type": "array", "items": {"$ref": f"#/definitions/{kind}"},
                              "description": f"[[{sec}]] tables, each naming a {SINGULAR[kind]}"}
                complete["properties"][sec] = {"items": {"$ref": f"#/definitions/{kind}_complete"}}
            elif sec == "augmentations":
                s = self.plain(model.AugmentationsSection, skip=("train", "val"))
                for split in ("train", "val"):
                    s["properties"][split] = {"type": "array", "items": {"$ref": "#/definitions/augmentation"},
                                              "description": f"the {split} augmentations, in order"}
                props[sec] = s
                complete["properties"][sec] = {"properties": {
                    split: {"items": {"$ref": "#/definitions/augmentation_complete"}} for split in ("train", "val")}}
            elif sec == "task":  # the parameters of whichever task run.task names
                props[sec] = {"type": "object", "description": "the parameters of the task that run.task names"}
            elif sec == "data":
                props[sec], complete["properties"][sec] = self.component(kind, cls, name_key="dataset")
            elif kind is not None:
                props[sec], req = self.component(kind, cls)
                if cls is model.LossSection:
                    req.setdefault("properties", {})["optimizer"] = {"$ref": "#/definitions/optimizer_complete"}
                complete["properties"][sec] = req
            else:
                props[sec] = self.plain(cls)
                if sec == "run":  # run.task names a registered task
                    props[sec]["properties"]["task"] = {"type": "string", "enum": self.names("tasks"),
                                                        "description": "the task: what the run predicts"}
                required = [k for k, f in section_fields(cls).items() if f.default is attrs.NOTHING]
                if required:
                    complete["properties"][sec] = {"required": required}
        defs["complete"] = complete
        return {
            "$schema": DRAFT,
            "title": "plugtrain run spec",
            "description": "A plugtrain training run. Generated by `plugtrain schema` from the installed plugins.",
            "type": "object",
            "properties": props,
            "additionalProperties": False,
            "if": {"required": ["extends"]},
            "else": {"$ref": "#/definitions/complete"},
            "definitions": defs,
        }


def build_schema(registry: Any = None) -> dict[str, Any]:
    """The JSON Schema of a run spec for the installed plugins (see the module docstring)."""
    if registry is None:
        from plugtrain.core.registry import get_registry

        registry = get_registry()
    return _Builder(registry).build()


def _default_text(value: Any) -> str:
    """A default as the schema describes it: its repr, or for a function or class its dotted name (a repr holds the
    object's address, which differs from one process to the next)."""
    qualname = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(qualname, str):
        return f"{getattr(value, '__module__', '')}.{qualname}".lstrip(".")
    return repr(value)
