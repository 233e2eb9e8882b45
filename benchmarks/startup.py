"""Startup: `plugtrain list`, `plugtrain check specs/quickstart.toml` and time to the first training step, each
beside `python -c "import timm, albumentations"` (the imports any timm + albumentations script pays). Goal: list and
check <= 1.2x that import."""

from __future__ import annotations

import os
import sys

from _common import ROOT, VENV_BIN, alternate, finish, main_args, row, time_command


def main() -> None:
    args = main_args(__doc__)
    repeats = 2 if args.quick else args.repeats
    env = {**os.environ, "PLUGTRAIN_PLAIN": "1"}
    py = sys.executable
    plugtrain = str(VENV_BIN / "plugtrain")
    imports = [py, "-c", "import timm, albumentations"]
    cases = [
        ("list", [plugtrain, "list"], 1.2),
        ("check specs/quickstart.toml", [plugtrain, "check", str(ROOT / "specs/quickstart.toml")], 1.2),
        ("first step (train --dry-run quickstart)",
         [plugtrain, "train", str(ROOT / "specs/quickstart.toml"), "--dry-run", "--set", "data.num_workers=0"], None),
    ]
    time_command(imports, env)  # warm the file cache
    rows = []
    for name, argv, goal in cases:
        ref, cand = alternate(lambda: time_command(imports, env), lambda argv=argv: time_command(argv, env), repeats)
        rows.append(row("startup", name, ref, cand, "s", goal if goal is not None else float("inf")))
    finish(rows, args)


if __name__ == "__main__":
    main()
