"""Scaling with work: time per epoch against the size of an imagefolder (1x, 4x, 16x images) stays linear, and
memory stays flat (images are streamed from disk, never all held in memory). ``--quick``: 1x and 4x only.

A base set of PNGs (64x64 RGB, 10 classes) is written once; the 4x and 16x folders hold hard links to it under new
names (distinct files to plugtrain: a cache keyed by path would still grow). Each size is one `plugtrain train` child
process (the benchmark plugin's tiny CNN, 32x32, 2 persistent workers, 2 epochs). Time per epoch is epoch 2's
``train/epoch_time`` from the run's ``metrics.csv`` (workers already started); peak RSS is the high-water mark of
the largest process of the run (``wait4``).

Rows (the ``bare`` column holds the expectation from the 1x run):
* ``time/epoch kx`` -- expected ``k`` x the 1x time, measured; goal: ratio <= 1.10 (linear within 10 %).
* ``peak RSS kx`` -- the 1x peak, measured; goal: ratio <= 1.05 (flat).
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path

from _common import ROOT, VENV_BIN, child_env, finish, install_plugin, machine, main_args, row, temp_dir
from dataloader import write_imagefolder

TIME_GOAL = 1.10
MEMORY_GOAL = 1.05
FACTORS = (1, 4, 16)


def spec_text(root: Path, out: Path, batch: int) -> str:
    return f"""
[run]
name = "scaling"
output_dir = "{out}"
seed = 0
epochs = 2

[data]
dataset = "imagefolder"
root = "{root}"
val_fraction = 0.1
image_size = 32
batch_size = {batch}
num_workers = 2

[backbone]
name = "bench-tiny-cnn"

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"

[[loggers]]
name = "csv"

[[metrics]]
name = "accuracy"
"""


def replicate(base: Path, dest: Path, copies: int) -> Path:
    """``dest`` with ``copies`` hard links (new names) of every file of ``base``'s class folders."""
    for cls in sorted(p for p in base.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir()):
            for k in range(copies):
                os.link(f, dest / cls.name / f"{f.stem}-{k}{f.suffix}")
    return dest


def train(spec: Path, env: dict[str, str]) -> tuple[float, int, float]:
    """``(seconds of epoch 2, train samples per epoch, peak RSS MB)`` of one `plugtrain train` run."""
    out = spec.parent / "runs"
    proc = subprocess.Popen([str(VENV_BIN / "plugtrain"), "train", str(spec), "--overwrite"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"plugtrain train {spec} exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
    with open(out / "scaling" / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    seconds = float(last["train/epoch_time"])
    samples = round(float(last["train/throughput"]) * seconds)
    return seconds, samples, usage.ru_maxrss / 1024


def main() -> None:
    args = main_args(__doc__)
    base_n, batch = (80, 16) if args.quick else (256, 32)
    factors = FACTORS[:2] if args.quick else FACTORS
    print(f"scaling: {machine()}; {base_n} x {factors} PNGs, batch {batch}", flush=True)
    rows = []
    with temp_dir("plugtrain-bench-scaling-") as tmp:
        env = child_env(install_plugin(tmp / "plugin"))
        t0 = time.perf_counter()
        base = write_imagefolder(tmp / "base", base_n)
        print(f"  wrote {base_n} PNGs in {time.perf_counter() - t0:.1f} s", flush=True)
        results = {}
        for k in factors:
            folder = replicate(base, tmp / f"x{k}", k)
            spec = tmp / f"spec-x{k}" / "spec.toml"
            spec.parent.mkdir()
            spec.write_text(spec_text(folder, spec.parent / "runs", batch))
            seconds, samples, peak = train(spec, env)
            results[k] = (seconds, samples, peak)
            print(f"  {k:>2}x: {samples} train images, epoch {seconds:.2f} s ({samples / seconds:.0f} img/s), "
                  f"peak RSS {peak:.0f} MB", flush=True)
    t1, n1, m1 = results[1]
    for k in factors[1:]:
        tk, nk, _ = results[k]
        expected = t1 * nk / n1  # linear in the number of images actually trained on
        rows.append(row("scaling", f"time/epoch {k}x images ({nk}) vs linear", expected, tk, "s", TIME_GOAL))
    for k in factors[1:]:
        rows.append(row("scaling", f"peak RSS {k}x images vs 1x", m1, results[k][2], "MB", MEMORY_GOAL))
    finish(rows, args)


if __name__ == "__main__":
    main()
