"""Shared helpers for the benchmarks: alternate the bare reference and plugtrain, take medians, print ratios.

Every benchmark script prints its own table and, with ``--json PATH``, writes its rows for ``run_all.py``.
A row is ``{"benchmark", "case", "bare", "plugtrain", "unit", "ratio", "goal", "ok"}``: ``ratio`` is always
plugtrain / bare; ``goal`` says which way is better (``<= 1.02`` for times, ``>= 0.95`` for rates) or is ``-`` for
a row that only informs (``ok`` is then ``None``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
PLUGIN_MODULE = "_bench_plugin"


# -- timing ------------------------------------------------------------------------------------------------------------
def time_command(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one run of a command (stdout discarded), in seconds; raises with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env,
                          text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def alternate(reference: Callable[[], float], candidate: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Run reference and candidate alternately ``repeats`` times each (the order flips every round, so that
    neither always runs second on a warm cache); return both medians."""
    ref, cand = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ref.append(reference())
            cand.append(candidate())
        else:
            cand.append(candidate())
            ref.append(reference())
    return statistics.median(ref), statistics.median(cand)


# -- rows and the table ------------------------------------------------------------------------------------------------
def row(benchmark: str, case: str, bare: float, plugtrain: float, unit: str, goal: float | None,
        better: str = "lower", note: str = "") -> dict[str, Any]:
    """One result: ``ratio`` = plugtrain / bare, compared with ``goal`` (``better`` is ``lower`` or ``higher``)."""
    ratio = plugtrain / bare if bare else float("nan")
    if goal is None:
        ok, goal_text = None, "-"
    else:
        ok = bool(ratio <= goal) if better == "lower" else bool(ratio >= goal)
        goal_text = f"{'<=' if better == 'lower' else '>='} {goal:g}"
    return {"benchmark": benchmark, "case": case, "bare": bare, "plugtrain": plugtrain, "unit": unit,
            "ratio": ratio, "goal": goal_text, "ok": ok, "note": note}


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.4g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'benchmark':<10} {'case':<46} {'bare':>10} {'plugtrain':>10} {'unit':<7} {'ratio':>7} "
            f"{'goal':>8}  met?")
    lines = [head, "-" * len(head)]
    for r in rows:
        met = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['benchmark']:<10} {r['case']:<46} {_num(r['bare']):>10} {_num(r['plugtrain']):>10} "
                     f"{r['unit']:<7} {r['ratio']:>7.3f} {r['goal']:>8}  {met}")
    notes = [f"  {r['benchmark']} / {r['case']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(format_table(rows), flush=True)


def main_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None,
              repeats: int = 5) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=repeats,
                   help=f"runs of each side (alternating); medians are reported (default {repeats})")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON here (run_all.py reads them)")
    p.add_argument("--quick", action="store_true", help="fewer repeats, steps and images (a smoke run)")
    if extra is not None:
        extra(p)
    return p.parse_args()


def finish(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if rows:
        print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def machine() -> str:
    """One line: CPU model, cores, Python, torch (when imported)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    torch = sys.modules.get("torch")
    if torch is not None:
        tv = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    else:
        try:
            tv = f", torch {importlib.metadata.version('torch')}"
        except importlib.metadata.PackageNotFoundError:
            tv = ""
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{tv}"


# -- the benchmark plugin ----------------------------------------------------------------------------------------------
def install_plugin(root: Path) -> str:
    """Register ``_bench_plugin`` as an installed plugin would be: a ``*.dist-info`` under ``root`` (put on
    ``sys.path``) whose ``entry_points.txt`` names the module; the process-wide registry is reloaded. Returns the
    ``PYTHONPATH`` that gives a child process (``plugtrain train``) the same plugin."""
    info = root / "plugtrain_bench-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugtrain-bench\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[plugtrain]\nbench = {PLUGIN_MODULE}\n")
    for p in (str(root), str(BENCH_DIR)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from plugtrain.core.registry import reset_registry

    importlib.invalidate_caches()
    reset_registry()
    return os.pathsep.join([str(root), str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def child_env(pythonpath: str | None = None) -> dict[str, str]:
    """The environment of a benchmarked child: plain output, no plugin switches from the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PLUGTRAIN_DISABLE_PLUGINS", "PLUGTRAIN_STRICT_PLUGINS", "PLUGTRAIN_DEBUG")}
    env["PLUGTRAIN_PLAIN"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


# -- plugtrain in process ----------------------------------------------------------------------------------------------
def build_trainer(spec_path: Path, overrides: Sequence[str] = (), progress: bool = True) -> Any:
    """A :class:`Trainer` for the spec, built through the public runtime API as ``plugtrain train`` builds it
    (``load_spec`` -> ``build_run`` -> ``Trainer``), single process, no run directory (so no checkpoints and no
    loggers, which run once per epoch, not per step). ``progress``: the plain progress lines of a non-TTY run
    (printed at log intervals; the caller may send stdout elsewhere)."""
    from plugtrain.core.runtime import distributed
    from plugtrain.core.runtime.build import build_run
    from plugtrain.core.runtime.progress import Progress
    from plugtrain.core.runtime.session import configure_torch
    from plugtrain.core.runtime.trainer import Trainer
    from plugtrain.core.spec import load_spec

    spec = load_spec(spec_path, list(overrides))
    dist = distributed.setup(spec.trainer.device, spec.trainer.backend)
    configure_torch(spec)
    built = build_run(spec, dist)
    return Trainer(built, dist, progress=Progress(spec.run.epochs, enabled=progress, tty=False))


def quiet_fit(trainer: Any) -> dict[str, float]:
    """``trainer.fit()`` with its progress lines captured (they are printed, into a buffer)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer.fit()


# -- memory ------------------------------------------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def tree_rss(pid: int) -> tuple[float, float, int]:
    """``(RSS of pid, RSS of pid and its descendants (DataLoader workers), number of processes)``, in MB. Pages
    shared after fork count once per process, so the tree over-counts, the same way for every sample."""
    main = _status_kb(pid, "VmRSS") / 1024
    total, count = main, 1
    for c in _children(pid):
        _, sub, n = tree_rss(c)
        total, count = total + sub, count + n
    return main, total, count
