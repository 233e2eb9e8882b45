"""Startup: wall time of `plugtrain list`, `plugtrain check specs/quickstart.toml` and the quickstart's time to the
first training step, each beside `python -c "import timm, albumentations"` (the imports any timm + albumentations
script pays before doing anything).

Time to first step is `plugtrain train specs/quickstart.toml --dry-run` (build everything: spec, registry, dataset,
model, loader with its workers; one batch forward and backward; print the summary; nothing written). It is also
shown beside `_bare_quickstart.py --first-step`, a hand-written script doing the same (imports, digits, resnet18, a DataLoader
with the same pipeline and workers, one batch forward/backward/step).

Each command runs as a fresh process; the reference and plugtrain alternate; medians of ``--repeats``.
``--quick``: one run of each, one shared import timing, no bare-script row. Goal: list and check <= 1.2x the import.
"""

from __future__ import annotations

import sys

from _common import BENCH_DIR, ROOT, VENV_BIN, alternate, child_env, finish, machine, main_args, row, time_command

GOAL = 1.2


def main() -> None:
    args = main_args(__doc__)
    repeats = 1 if args.quick else args.repeats
    env = child_env()
    py = sys.executable
    plugtrain = str(VENV_BIN / "plugtrain")
    quickstart = str(ROOT / "specs" / "quickstart.toml")
    imports = [py, "-c", "import timm, albumentations"]
    bare_first = [py, str(BENCH_DIR / "_bare_quickstart.py"), "--first-step"]
    dry_run = [plugtrain, "train", quickstart, "--dry-run"]
    cases = [
        ("plugtrain list", imports, [plugtrain, "list"], GOAL),
        ("plugtrain check quickstart", imports, [plugtrain, "check", quickstart], GOAL),
        ("first step (train --dry-run) vs import", imports, dry_run, None),
        ("first step vs bare script", bare_first, dry_run, None),
    ]
    if args.quick:  # one import timing shared by the rows; no bare script
        cases = cases[:3]
        once = time_command(imports, env)
    print(f"startup: {machine()}; {repeats} repeat(s)", flush=True)
    if not args.quick:
        time_command(imports, env)  # warm the file cache
    rows = []
    for name, ref_argv, argv, goal in cases:
        if args.quick:
            ref, cand = once, time_command(argv, env)
        else:
            ref, cand = alternate(lambda r=ref_argv: time_command(r, env), lambda a=argv: time_command(a, env),
                                  repeats)
        ref_name = "import timm, albumentations" if ref_argv is imports else "_bare_quickstart.py --first-step"
        rows.append(row("startup", name, ref, cand, "s", goal))
        print(f"  {name}: {ref_name} {ref:.2f} s, plugtrain {cand:.2f} s, ratio {cand / ref:.3f}", flush=True)
    finish(rows, args)


if __name__ == "__main__":
    main()
