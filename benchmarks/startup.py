"""Startup: wall time of the commands people run all day — `plugtrain list`, `list losses`, `show`, `check
specs/quickstart.toml`, `schema` — each beside `python -c "import torch"`, with a warm component catalog (the
normal case: plugtrain.core.catalog) and a cold one (deleted before each run: the first command after installing,
upgrading or editing a plugin); and the quickstart's time to the first training step.

Time to first step is `plugtrain train specs/quickstart.toml --dry-run` (build everything: spec, registry, dataset,
model, loader with its workers; one batch forward and backward; print the summary; nothing written), beside
`_bare_quickstart.py --first-step`, a hand-written script doing the same (imports, digits, resnet18, a DataLoader with
the same pipeline and workers, one batch forward/backward/step).

Each command runs as a fresh process with its own catalog folder (PLUGTRAIN_CACHE_DIR, a temporary one); the
reference and plugtrain alternate; medians of ``--repeats``. ``--quick``: one run of each, one shared import timing,
one cold row, no bare-script row. Goals (issue 28): warm list/show/check/schema <= 1.5x the import of torch (or
under 0.5 s, the note says when they import no torch); first step <= 1.05x the bare script.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from _common import BENCH_DIR, ROOT, VENV_BIN, alternate, child_env, finish, machine, main_args, row, time_command

WARM_GOAL = 1.5
FIRST_STEP_GOAL = 1.05


def main() -> None:
    args = main_args(__doc__)
    repeats = 1 if args.quick else args.repeats
    cache = Path(tempfile.mkdtemp(prefix="plugtrain-startup-"))
    env = {**child_env(), "PLUGTRAIN_CACHE_DIR": str(cache)}
    py = sys.executable
    plugtrain = str(VENV_BIN / "plugtrain")
    quickstart = str(ROOT / "specs" / "quickstart.toml")
    imports = [py, "-c", "import torch"]
    commands = [
        ("plugtrain list", [plugtrain, "list"]),
        ("plugtrain list losses", [plugtrain, "list", "losses"]),
        ("plugtrain show backbones resnet18", [plugtrain, "show", "backbones", "resnet18"]),
        ("plugtrain check quickstart", [plugtrain, "check", quickstart]),
        ("plugtrain schema", [plugtrain, "schema"]),
    ]

    def cold(argv: list[str]) -> float:
        shutil.rmtree(cache / "catalog", ignore_errors=True)
        return time_command(argv, env)

    print(f"startup: {machine()}; {repeats} repeat(s)", flush=True)
    once = time_command(imports, env)  # also warms the file cache
    rows = []

    def add(name: str, ref_argv: list[str], measure, goal: float | None, ref_name: str) -> None:
        if args.quick:
            ref, cand = once, measure()
        else:
            ref, cand = alternate(lambda: time_command(ref_argv, env), measure, repeats)
        note = f"{cand:.2f} s" + (" (< 0.5 s)" if cand < 0.5 else "")
        rows.append(row("startup", name, ref, cand, "s", goal, note=note if goal is not None else ""))
        print(f"  {name}: {ref_name} {ref:.2f} s, plugtrain {cand:.2f} s, ratio {cand / ref:.3f}", flush=True)

    def warm(argv: list[str]) -> float:
        time_command(argv, env)  # untimed: (re)builds the catalog if anything changed since (an edit nearby)
        return time_command(argv, env)

    for name, argv in commands:
        add(f"{name} (warm catalog)", imports, lambda a=argv: warm(a), WARM_GOAL, "import torch")
    for name, argv in commands[:1] if args.quick else commands:
        add(f"{name} (cold catalog)", imports, lambda a=argv: cold(a), None, "import torch")
    dry_run = [plugtrain, "train", quickstart, "--dry-run"]
    add("first step (train --dry-run) vs import torch", imports, lambda: warm(dry_run), None,
        "import torch")
    if not args.quick:
        bare = [py, str(BENCH_DIR / "_bare_quickstart.py"), "--first-step"]
        ref, cand = alternate(lambda: time_command(bare, env), lambda: warm(dry_run), repeats)
        rows.append(row("startup", "first step vs bare script", ref, cand, "s", FIRST_STEP_GOAL))
        print(f"  first step: bare {ref:.2f} s, plugtrain {cand:.2f} s, ratio {cand / ref:.3f}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    finish(rows, args)


if __name__ == "__main__":
    main()
