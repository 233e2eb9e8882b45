"""The TOML run spec: loading, composition (``extends``), overrides (``--set``), validation and the typed model."""

from plugtrain.core.spec.loader import SpecError, check_command, dumps, load_spec, resolve, resolve_dict
from plugtrain.core.spec.model import RunSpec, from_dict, to_dict

__all__ = ["RunSpec", "SpecError", "check_command", "dumps", "from_dict", "load_spec", "resolve", "resolve_dict",
           "to_dict"]
