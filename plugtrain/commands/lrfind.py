"""``plugtrain lr-find SPEC [--set K=V] [--out DIR] [--overwrite] [--batch-size]``: the learning-rate range test
(:func:`plugtrain.core.runtime.lrfind.find_lr`) or the batch-size probe, on the spec's own run.

Nothing is written to a run directory: the report goes to one folder (``--out``, default
``<output_dir>/lr-find-<name>`` or ``<output_dir>/batch-size-<name>``), made whole or not at all (written beside
it, then renamed into place); an existing folder is replaced only with ``--overwrite``, and only when it holds
nothing but an earlier report. Under torchrun every rank takes part and rank 0 writes and prints.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import distributed
from plugtrain.core.runtime.rundir import run_dir_for
from plugtrain.core.spec.loader import load_spec

LR_FILES = {"lr-find.json", "lr-find.png"}
BS_FILES = {"batch-size.json"}


def run(spec_path: str, overrides: Sequence[str] = (), *, out: str | None = None, overwrite: bool = False,
        batch_size: bool = False, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
        max_batch_size: int | None = None, as_json: bool = False) -> int:
    from plugtrain.core.runtime import lrfind

    spec = load_spec(spec_path, list(overrides))
    what = "batch-size" if batch_size else "lr-find"
    folder = Path(out) if out else run_dir_for(spec.run.output_dir, f"{what}-{spec.run.name}")
    _check_out(folder, overwrite, BS_FILES if batch_size else LR_FILES)
    dist = distributed.setup(spec.trainer.device, spec.trainer.backend)
    ok = False
    try:
        if batch_size:
            rows = lrfind.find_batch_size(spec, dist, max_batch_size=max_batch_size)
            report = _batch_size_report(spec, dist, rows)
            files = {"batch-size.json": json.dumps(report, indent=2) + "\n"}
        else:
            result = lrfind.find_lr(spec, dist, min_lr=min_lr, max_lr=max_lr, steps=steps)
            report = {"spec": spec.source, "optimizer": spec.optimizer.name,
                      "spec_lr": spec.optimizer.params.get("lr"), **result.to_json()}
            files = {"lr-find.json": json.dumps(report, indent=2) + "\n", "lr-find.png": _plot(result)}
        if dist.rank == 0:
            _write(folder, files, overwrite)
            if as_json:
                console.print_json({**report, "out": str(folder)})
            elif batch_size:
                _print_batch_size(report, folder)
            else:
                _print_lr(result, spec, folder)
        ok = True
    finally:
        distributed.teardown(synchronize=ok)
    return 0


def _check_out(folder: Path, overwrite: bool, ours: set[str]) -> None:
    """Refuse, before any work, a report folder that exists (without ``--overwrite``) or holds anything else."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise PlugtrainError(f"{folder} exists and is not a folder: choose another --out")
    if not overwrite:
        raise PlugtrainError(f"{folder} exists (an earlier report?): pass --overwrite to replace it, or --out DIR")
    others = sorted(p.name for p in folder.iterdir() if p.name not in ours)
    if others:
        raise PlugtrainError(f"--overwrite: {folder} holds files that are not a report of this command "
                             f"({', '.join(others[:5])}); it is left as it is: choose another --out")


def _write(folder: Path, files: dict[str, str | bytes], overwrite: bool) -> None:
    """Write the report into a sibling folder, then rename it into place (an old report goes only then)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        for name, data in files.items():
            (staged / name).write_bytes(data.encode() if isinstance(data, str) else data)
        if folder.exists() and overwrite:
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(old)
            staged.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staged.rename(folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _plot(result: Any) -> bytes:
    """The curve as a PNG: loss against lr (log scale), raw and smoothed, the suggestion marked."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    if result.lrs:
        ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
        ax.plot(result.lrs[:len(result.smoothed)], result.smoothed, color="C0", lw=2, label="smoothed loss")
        if result.suggestion is not None:
            ax.axvline(result.suggestion, color="C3", ls="--", label=f"suggested lr {result.suggestion:.3g}")
        if result.min_over_10 is not None and result.min_over_10 != result.suggestion:
            ax.axvline(result.min_over_10, color="C2", ls=":", label=f"minimum / 10: {result.min_over_10:.3g}")
        top = min(max(result.smoothed), 2.5 * result.smoothed[0]) if result.smoothed else None
        if top is not None and top > min(result.smoothed):
            ax.set_ylim(min(result.smoothed) * 0.9, top * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (optimizer.lr)")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test: {result.stopped}; global batch {result.global_batch}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _print_lr(result: Any, spec: Any, folder: Path) -> None:
    console.echo(f"lr-find: {len(result.lrs)} steps from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}"
                 f" (global batch {result.global_batch}, {result.world_size} process(es)); {result.stopped}"
                 if result.lrs else f"lr-find: {result.stopped}")
    if result.suggestion is None:
        console.echo("no suggestion: the loss was not finite at the first step; lower --min-lr")
    else:
        console.echo(f"suggested lr: {result.suggestion:.3g} (rule: {result.rule}); minimum / 10 would give "
                     f"{result.min_over_10:.3g}; the spec has {spec.optimizer.params.get('lr', 'the default')}")
        console.echo(f"use: --set optimizer.lr={result.suggestion:.3g}")
    console.echo(f"plot and values: {folder / 'lr-find.png'}, {folder / 'lr-find.json'}")


def _batch_size_report(spec: Any, dist: Any, rows: list[Any]) -> dict[str, Any]:
    cuda = dist.device.type == "cuda"
    fitting = [r.batch_size for r in rows if r.fits]
    if cuda:
        measured = "peak CUDA memory allocated by torch during one training step (torch.cuda.max_memory_allocated)"
        largest = fitting[-1] if fitting else None
        note = ("the largest batch size that fit the device's memory" if any(not r.fits for r in rows) else
                "every batch size tried fit; raise --max-batch-size to look further")
    else:
        measured = ("the process's peak resident set size (RSS) after one training step; it only grows, and it is "
                    "host memory: on the CPU there is no device-memory limit to find")
        largest = None
        note = "CPU: no device-memory limit; choose the batch size by the host memory and speed measured here"
    return {"spec": spec.source, "device": str(dist.device), "per_process": True, "world_size": dist.world_size,
            "measured": measured, "largest_fitting": largest, "note": note,
            "rows": [{"batch_size": r.batch_size, "fits": r.fits, "peak_bytes": r.peak_bytes, "seconds": r.seconds,
                      "samples_per_second": r.batch_size / r.seconds if r.seconds else None, "error": r.error}
                     for r in rows]}


def _print_batch_size(report: dict[str, Any], folder: Path) -> None:
    rows = [(r["batch_size"], "yes" if r["fits"] else "no (out of memory)",
             f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] else "-",
             f"{r['samples_per_second']:.0f}" if r["samples_per_second"] else "-") for r in report["rows"]]
    console.table(f"batch sizes per process on {report['device']}", ["batch size", "fits", "peak memory",
                                                                      "samples/s"], rows)
    console.echo(f"measured: {report['measured']}")
    if report["largest_fitting"] is not None:
        console.echo(f"largest batch size that fits: {report['largest_fitting']}: "
                     f"--set data.batch_size={report['largest_fitting']}")
    else:
        console.echo(report["note"])
    console.echo(f"values: {folder / 'batch-size.json'}")
