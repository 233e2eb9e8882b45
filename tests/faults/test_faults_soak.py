"""Soak (issue 6, item 10): 200 short epochs of a tiny real run; the trainer's resident memory must not grow.

Every epoch trains 2 steps, validates, writes ``last.pt``, a metrics.csv row, TensorBoard scalars and a console line;
the test reads ``/proc/<pid>/status`` (VmRSS) each time the console line of an epoch arrives. After a warm-up of 20
epochs (allocator pools, lazily built kernels) the mean RSS of the last 20 epochs must be within 2% of the mean of
epochs 21-40, and (since most of the RSS is shared libraries) within 8 MiB of it.
"""

from __future__ import annotations

import statistics

import pytest
from helpers_faults import Run, plugtrain_cmd, report, rss_kib, write_spec

EPOCHS = 200


@pytest.mark.slow
def test_200_epochs_resident_memory_growth_under_2_percent(tmp_path):
    spec = write_spec(tmp_path / "soak.toml", tmp_path / "runs", run={"name": "soak", "epochs": EPOCHS},
                      data={"val_fraction": 0.02, "num_workers": 0},
                      loggers=[{"name": "csv"}, {"name": "console"}, {"name": "tensorboard", "flush_secs": 1}],
                      trainer={"max_steps_per_epoch": 2, "log_every_steps": 1000})
    run = Run(plugtrain_cmd("train", spec))
    rss: dict[int, int] = {}
    for _ in range(EPOCHS):
        m = run.wait_for(rf"^epoch (\d+)/{EPOCHS}  train/loss=", timeout=120)
        try:
            rss[int(m[1])] = rss_kib(run.pid)
        except OSError:
            break
    assert run.finish() == 0, run.output[-3000:]
    assert sorted(rss) == list(range(1, EPOCHS + 1))
    early = statistics.mean(rss[e] for e in range(21, 41))
    late = statistics.mean(rss[e] for e in range(EPOCHS - 19, EPOCHS + 1))
    growth = (late - early) / early
    xs = list(range(21, EPOCHS + 1))
    slope = statistics.linear_regression(xs, [rss[e] for e in xs]).slope  # KiB per epoch
    report("soak", epochs=EPOCHS, seconds=round(run.seconds, 1), rss_epoch1_mib=round(rss[1] / 1024, 1),
           rss_early_mib=round(early / 1024, 1), rss_late_mib=round(late / 1024, 1),
           growth_percent=round(100 * growth, 3), slope_kib_per_epoch=round(slope, 2),
           rss_max_mib=round(max(rss.values()) / 1024, 1))
    assert growth < 0.02, f"RSS grew {100 * growth:.2f}% from epochs 21-40 to the last 20 epochs"
    # most of the RSS is the libraries (torch alone is hundreds of MiB): bound the absolute growth too
    assert late - early < 8 * 1024, f"RSS grew {(late - early) / 1024:.1f} MiB over {EPOCHS - 30} epochs"
