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

Every case is reported twice: wall time, and the CPU time of the process and its children (user + sys, from
``getrusage``), which a machine shared with other work inflates much less.
"""

from __future__ import annotations

import resource
import shutil
import statistics
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

    cpu_log: list[float] = []  # the CPU seconds of each timed run, in order

    def timed(argv: list[str]) -> float:
        """Wall seconds of one run; its CPU seconds (children's user + sys) go to ``cpu_log``."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time_command(argv, env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_log.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return wall

    def cold(argv: list[str]) -> float:
        shutil.rmtree(cache / "catalog", ignore_errors=True)
        return timed(argv)

    print(f"startup: {machine()}; {repeats} repeat(s)", flush=True)
    once = timed(imports)  # also warms the file cache
    once_cpu = cpu_log[-1]
    rows = []

    def pair(ref_fn, cand_fn) -> tuple[float, float, float, float]:
        """Medians of wall and CPU seconds of the reference and the candidate, run alternately."""
        ref_cpu, cand_cpu = [], []

        def ref_run() -> float:
            wall = ref_fn()
            ref_cpu.append(cpu_log[-1])
            return wall

        def cand_run() -> float:
            wall = cand_fn()  # its last timed run is the measured one
            cand_cpu.append(cpu_log[-1])
            return wall

        ref, cand = alternate(ref_run, cand_run, repeats)
        return ref, cand, statistics.median(ref_cpu), statistics.median(cand_cpu)

    def add(name: str, ref_argv: list[str], measure, goal: float | None, ref_name: str) -> None:
        if args.quick:
            ref, ref_cpu = once, once_cpu
            cand = measure()
            cand_cpu = cpu_log[-1]
        else:
            ref, cand, ref_cpu, cand_cpu = pair(lambda: timed(ref_argv), measure)
        for unit, r, c in (("s", ref, cand), ("CPU s", ref_cpu, cand_cpu)):
            note = f"{c:.2f} {unit}" + (" (< 0.5 s)" if c < 0.5 else "")
            rows.append(row("startup", name, r, c, unit, goal, note=note if goal is not None else ""))
        print(f"  {name}: {ref_name} {ref:.2f} s ({ref_cpu:.2f} CPU s), plugtrain {cand:.2f} s ({cand_cpu:.2f} CPU "
              f"s), ratio {cand / ref:.3f} ({cand_cpu / ref_cpu:.3f} CPU)", flush=True)

    def warm(argv: list[str]) -> float:
        time_command(argv, env)  # untimed: (re)builds the catalog if anything changed since (an edit nearby)
        return timed(argv)

    for name, argv in commands:
        add(f"{name} (warm catalog)", imports, lambda a=argv: warm(a), WARM_GOAL, "import torch")
    for name, argv in commands[:1] if args.quick else commands:
        add(f"{name} (cold catalog)", imports, lambda a=argv: cold(a), None, "import torch")
    dry_run = [plugtrain, "train", quickstart, "--dry-run"]
    add("first step (train --dry-run) vs import torch", imports, lambda: warm(dry_run), None,
        "import torch")
    if not args.quick:
        bare = [py, str(BENCH_DIR / "_bare_quickstart.py"), "--first-step"]
        ref, cand, ref_cpu, cand_cpu = pair(lambda: timed(bare), lambda: warm(dry_run))
        rows.append(row("startup", "first step vs bare script", ref, cand, "s", FIRST_STEP_GOAL))
        rows.append(row("startup", "first step vs bare script", ref_cpu, cand_cpu, "CPU s", FIRST_STEP_GOAL))
        print(f"  first step: bare {ref:.2f} s ({ref_cpu:.2f} CPU s), plugtrain {cand:.2f} s ({cand_cpu:.2f} CPU s), "
              f"ratio {cand / ref:.3f} ({cand_cpu / ref_cpu:.3f} CPU)", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    finish(rows, args)


if __name__ == "__main__":
    main()
