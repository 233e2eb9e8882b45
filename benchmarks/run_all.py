"""Run the CPU benchmarks (``make bench``), each in its own process, and print one table: benchmark, case, bare,
plugtrain, ratio, goal, met?

    python benchmarks/run_all.py                 # the full CPU benchmarks (several minutes)
    python benchmarks/run_all.py --quick         # a smoke run of each
    python benchmarks/run_all.py --only overhead,startup
    python benchmarks/run_all.py --gpu           # add gpu.py (needs CUDA)
    python benchmarks/run_all.py --write-results # also put the table in benchmarks/RESULTS.md (= make bench)

Exit status: 0 when every benchmark ran (goals met or not: the table says), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH_DIR, format_table, machine

CPU_BENCHMARKS = ("overhead", "dataloader", "startup", "memory", "scaling")
RESULTS = BENCH_DIR / "RESULTS.md"
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"


def run(name: str, args: argparse.Namespace, out: Path) -> tuple[list[dict], str | None]:
    argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), "--json", str(out)]
    if args.quick:
        argv.append("--quick")
    if args.repeats:
        argv += ["--repeats", str(args.repeats)]
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=BENCH_DIR.parent)
    print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===", flush=True)
    if proc.returncode:
        return [], f"{name}.py exited {proc.returncode}"
    if not out.exists():
        return [], f"{name}.py wrote no results"
    return json.loads(out.read_text()), None


def write_results(table: str, header: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n{header}\n\n```\n{table}\n```\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run of each benchmark")
    p.add_argument("--repeats", type=int, help="repeats per benchmark (each has its own default)")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    p.add_argument("--gpu", action="store_true", help="also run gpu.py (skipped without CUDA)")
    p.add_argument("--write-results", action="store_true", help=f"put the table in {RESULTS.name}")
    args = p.parse_args()
    names = [n for n in CPU_BENCHMARKS + (("gpu",) if args.gpu else ()) if not args.only or n in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(CPU_BENCHMARKS + ("gpu",))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(CPU_BENCHMARKS)}, gpu")
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="plugtrain-bench-") as tmp:
        for name in names:
            got, failure = run(name, args, Path(tmp) / f"{name}.json")
            rows += got
            if failure:
                failures.append(failure)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = f"{machine()}; {when}" + ("; --quick (smoke run: numbers are not meaningful)" if args.quick else "")
    table = format_table(rows)
    print(f"\n{header}\n\n{table}")
    missed = [r for r in rows if r["ok"] is False]
    print(f"\n{len(rows)} rows; {len(missed)} goal(s) missed" + (f"; FAILED: {'; '.join(failures)}" if failures else ""))
    if args.write_results:
        write_results(table, header)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
