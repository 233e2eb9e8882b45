"""``plugtrain check SPEC... [--set K=V] [--print]``: validate specs before any data or model is touched.

Every spec is checked (a bad one does not hide the next); all problems are reported together, as one
:class:`~plugtrain.core.spec.SpecError` (exit code 2). The specs are a queue, as ``plugtrain train`` runs them: a
spec may name a file inside the run directory of a spec before it (stage 2's ``pretrained`` checkpoint of stage 1).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import rundir
from plugtrain.core.spec import SpecError, dumps, load_spec, resolve


def run(specs: Sequence[str], overrides: Sequence[str] = (), *, print_resolved: bool = False) -> int:
    """An ``SPEC: OK`` line per good spec (or its resolved TOML with ``print_resolved``); every problem, exit 2."""
    problems: list[str] = []
    earlier: list[Path] = []  # the run directories of the specs before this one: files they write will be there
    for p in specs:
        try:
            with rundir.queued_before(earlier):
                spec = load_spec(p, list(overrides))
        except SpecError as exc:
            problems.extend(exc.problems)
            earlier.extend(_run_dir_of(p, overrides))
            continue
        earlier.extend(_run_dir_of(p, overrides))
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


def _run_dir_of(path: str, overrides: Sequence[str]) -> list[Path]:
    """The run directory the spec at ``path`` will write (none when its run section cannot say)."""
    try:
        run = resolve(path, list(overrides), validate=False).data.get("run")
        if isinstance(run, dict) and isinstance(run.get("name"), str):
            return [rundir.run_dir_for(str(run.get("output_dir", "runs")), run["name"])]
    except (PlugtrainError, OSError, ValueError, TypeError):
        pass
    return []
