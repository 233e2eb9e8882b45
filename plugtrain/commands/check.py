"""``plugtrain check SPEC... [--set K=V] [--print]``: validate specs before any data or model is touched.

Every spec is checked (a bad one does not hide the next); all problems are reported together, as one
:class:`~plugtrain.core.spec.SpecError` (exit code 2).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from plugtrain.core.spec import SpecError, dumps, load_spec


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, print_resolved: bool = False) -> int:
    """An ``SPEC: OK`` line per good spec (or its resolved TOML with ``print_resolved``); every problem, exit 2."""
    problems: list[str] = []
    for p in specs:
        try:
            spec = load_spec(p, list(overrides))
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if print_resolved:
            if len(specs) > 1:
                sys.stdout.write(f"# ---- {p}\n")
            sys.stdout.write(dumps(spec, notes=True))
        else:
            print(f"{p}: OK")
        sys.stdout.flush()
    if problems:
        raise SpecError(problems)
    return 0
