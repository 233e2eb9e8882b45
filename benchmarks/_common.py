"""Shared helpers for the benchmarks: alternate the reference and plugtrain, take medians, print ratios.

Every benchmark script prints its own table and, with ``--json PATH``, writes its rows for ``run_all.py``.
A row is ``{"benchmark", "case", "reference", "plugtrain", "unit", "ratio", "goal", "ok"}``; ``ratio`` is
plugtrain / reference for times (lower is better) and plugtrain / reference for rates (higher is better), as
``better`` says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def time_command(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one run of a command (stdout discarded), in seconds; raises if it fails."""
    t0 = time.perf_counter()
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def alternate(reference: Callable[[], float], candidate: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Run reference and candidate alternately ``repeats`` times each; return both medians."""
    ref, cand = [], []
    for i in range(repeats):
        order = (reference, candidate) if i % 2 == 0 else (candidate, reference)
        for fn in order:
            (ref if fn is reference else cand).append(fn())
    return statistics.median(ref), statistics.median(cand)


def row(benchmark: str, case: str, reference: float, plugtrain: float, unit: str, goal: float,
        better: str = "lower") -> dict:
    ratio = plugtrain / reference if reference else float("nan")
    ok = ratio <= goal if better == "lower" else ratio >= goal
    return {"benchmark": benchmark, "case": case, "reference": reference, "plugtrain": plugtrain, "unit": unit,
            "ratio": ratio, "goal": f"{'<=' if better == 'lower' else '>='} {goal}", "ok": ok}


def print_table(rows: list[dict]) -> None:
    head = f"{'benchmark':<12} {'case':<44} {'reference':>12} {'plugtrain':>12} {'unit':<8} {'ratio':>7} {'goal':>8}  ok"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['benchmark']:<12} {r['case']:<44} {r['reference']:>12.4g} {r['plugtrain']:>12.4g} {r['unit']:<8} "
              f"{r['ratio']:>7.3f} {r['goal']:>8}  {'yes' if r['ok'] else 'NO'}")
    sys.stdout.flush()


def main_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    return p.parse_args()


def finish(rows: list[dict], args: argparse.Namespace) -> None:
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
