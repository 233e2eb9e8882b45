"""``plugtrain schema``: print the JSON Schema of the run spec, plugins included, for editors and CI.

The schema itself is built by :mod:`plugtrain.core.spec.schema`, once per component catalog (it is stored beside
it, :mod:`plugtrain.core.catalog`); this command only prints it.
"""

from __future__ import annotations

from plugtrain.core import console


def run() -> int:
    """Print the JSON Schema (draft 7) of a run spec with every registered component; exit code 0."""
    from plugtrain.core.catalog import Catalog, get_catalog
    from plugtrain.core.registry import get_registry
    from plugtrain.core.spec.schema import build_schema

    catalog = get_catalog()
    if isinstance(catalog, Catalog):  # built once per catalog (from the live registry), then read back
        console.print_json(catalog.cached("schema", lambda: build_schema(get_registry())))
    else:
        console.print_json(build_schema(catalog))
    return 0
