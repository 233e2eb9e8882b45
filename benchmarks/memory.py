"""Memory: peak RSS of the quickstart, and RSS across epochs (flat: < 2 % growth).

`plugtrain train specs/quickstart.toml` runs as a child process (run directory in a temporary folder) beside
`_bare_quickstart.py`, the same training written by hand. Resident memory is sampled from ``/proc`` when each epoch's
line appears: the main process alone, and the main process with its DataLoader workers (the tree; pages shared
after fork count once per process). Peak RSS is the high-water mark of the largest process of the tree (``wait4``).

Rows:
* ``peak RSS`` -- bare vs plugtrain, MB (no goal; recorded).
* ``RSS growth, epoch 2 -> last`` -- the growth factor of each side (epoch 1 allocates the optimizer state,
  worker buffers, ...; from epoch 2 on memory must stay flat). The ratio column is plugtrain's own growth.
  Goal: <= 1.02.

``--quick`` trains 3 epochs of 2 steps. One run per side (memory does not need medians).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _common import BENCH_DIR, ROOT, VENV_BIN, child_env, finish, machine, main_args, row, temp_dir, tree_rss

GOAL = 1.02


def run_sampled(argv: list[str], env: dict[str, str]) -> tuple[float, list[tuple[float, float, int]], float]:
    """Run ``argv``; at each ``epoch N/M ... train/loss=`` line sample RSS.
    Returns ``(peak MB, [(main MB, tree MB, processes) per epoch], seconds)``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, int]] = []
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch ") and "train/loss=" in line:
            samples.append(tree_rss(proc.pid))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-3000:]}{''.join(lines[-20:])}")
    return usage.ru_maxrss / 1024, samples, time.perf_counter() - t0


def growth(samples: list[tuple[float, float, int]], which: int) -> float:
    """RSS after the last epoch / RSS after epoch 2 (epoch 1 when there are only 2). For the tree, the last sample
    with as many processes as at epoch 2 (after its last line a process may already be stopping its workers)."""
    base = samples[1] if len(samples) > 2 else samples[0]
    last = samples[-1]
    if which == 1:
        last = next(s for s in reversed(samples) if s[2] == base[2])
    return last[which] / base[which]


def main() -> None:
    args = main_args(__doc__)
    epochs, steps = (3, 2) if args.quick else (8, 0)
    print(f"memory: {machine()}; quickstart, {epochs} epochs" + (f" of {steps} steps" if steps else ""), flush=True)
    with temp_dir("plugtrain-bench-memory-") as tmp:
        env = child_env()
        ours = [str(VENV_BIN / "plugtrain"), "train", str(ROOT / "specs" / "quickstart.toml"), "--overwrite",
                "--set", f'run.output_dir="{tmp}"', "--set", f"run.epochs={epochs}"]
        bare = [sys.executable, str(BENCH_DIR / "_bare_quickstart.py"), "--epochs", str(epochs)]
        if steps:
            ours += ["--set", f"trainer.max_steps_per_epoch={steps}"]
            bare += ["--max-steps", str(steps)]
        b_peak, b_samples, b_s = run_sampled(bare, env)
        p_peak, p_samples, p_s = run_sampled(ours, env)
    for name, samples, seconds in (("bare", b_samples, b_s), ("plugtrain", p_samples, p_s)):
        print(f"  {name} ({seconds:.0f} s): RSS per epoch, main / with workers (MB): "
              + ", ".join(f"{m:.0f}/{t:.0f} ({n} processes)" for m, t, n in samples), flush=True)
    if len(p_samples) != epochs or len(b_samples) != epochs:
        raise RuntimeError(f"expected {epochs} epoch lines, got {len(b_samples)} (bare) and {len(p_samples)}")
    rows = [row("memory", "peak RSS, quickstart (largest process)", b_peak, p_peak, "MB", None)]
    for which, label in ((0, "main process"), (1, "with workers")):
        bg, pg = growth(b_samples, which), growth(p_samples, which)
        r = row("memory", f"RSS growth epoch 2 -> {epochs}, {label}", bg, pg, "x", GOAL)
        r.update(ratio=pg, ok=pg <= GOAL, note="" if which else "ratio = plugtrain's own growth factor "
                 "(bare / plugtrain columns: each side's growth)")
        rows.append(r)
    finish(rows, args)


if __name__ == "__main__":
    main()
