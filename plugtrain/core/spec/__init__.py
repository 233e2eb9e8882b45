"""The TOML run spec: loading, composition (``extends``), overrides (``--set``), validation, the typed model and
the JSON Schema (:mod:`.schema`, imported on demand)."""

from plugtrain.core.spec.loader import SpecError, dumps, load_spec, resolve, resolve_dict
from plugtrain.core.spec.model import RunSpec, from_dict, to_dict

__all__ = ["RunSpec", "SpecError", "dumps", "from_dict", "load_spec", "resolve", "resolve_dict", "to_dict"]
