"""``plugtrain schema``: print the JSON Schema of the run spec, plugins included, for editors and CI.

The schema itself is built by :mod:`plugtrain.core.spec.schema`; this command only prints it.
"""

from __future__ import annotations

from plugtrain.core import console


def run() -> int:
    """Print the JSON Schema (draft 7) of a run spec with every registered component; exit code 0."""
    from plugtrain.core.spec.schema import build_schema

    console.print_json(build_schema())
    return 0
