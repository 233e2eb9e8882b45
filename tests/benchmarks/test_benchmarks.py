"""Smoke tests of the benchmarks: each CPU benchmark runs with ``--quick`` and prints its table of ratios.

Timings are never asserted here (speed is measured by ``make bench``, not in tests); what is asserted is that every
benchmark runs end to end through the real runtime and reports a finite plugtrain / bare ratio for each of its rows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
CPU_BENCHMARKS = ["overhead", "dataloader", "startup", "memory", "scaling"]
#: The cases each quick run must report (a row that silently disappears is a defect too).
EXPECTED_CASES = {
    "overhead": ["tiny-cnn/memory", "tiny-cnn/dataloader", "resnet18/memory", "resnet18/dataloader"],
    "dataloader": ["bare loop, decoded images", "bare DataLoader", "cache (memory), epoch 2+", "webdataset vs imagefolder"],
    "startup": ["plugtrain list", "plugtrain check", "first step"],
    "memory": ["peak RSS", "RSS growth epoch 2 -> 3, main process", "RSS growth epoch 2 -> 3, with workers"],
    "scaling": ["time/epoch 4x", "peak RSS 4x"],
}


def run_bench(name: str, tmp_path: Path, *extra: str) -> tuple[str, list[dict]]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(out.read_text()) if out.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_BENCHMARKS)
def test_cpu_benchmark_quick_prints_ratios(name: str, tmp_path: Path) -> None:
    stdout, rows = run_bench(name, tmp_path)
    assert any(line.split()[:4] == ["benchmark", "case", "bare", "plugtrain"] and "ratio" in line
               for line in stdout.splitlines()), stdout
    cases = [r["case"] for r in rows]
    for expected in EXPECTED_CASES[name]:
        assert any(expected in c for c in cases), f"{name}: no row for {expected!r} in {cases}"
    for r in rows:
        assert r["benchmark"] == name
        assert math.isfinite(r["bare"]) and r["bare"] > 0, r
        assert math.isfinite(r["plugtrain"]) and r["plugtrain"] > 0, r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert f"{r['ratio']:.3f}" in stdout  # the printed table carries the ratio
        assert r["ok"] in (True, False, None)


@pytest.mark.slow
def test_gpu_benchmark_skips_cleanly_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: gpu.py measures instead of skipping")
    stdout, rows = run_bench("gpu", tmp_path)
    assert "no CUDA device" in stdout
    assert rows == []


def test_table_rows_and_goals() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _common import format_table, row
    finally:
        sys.path.remove(str(BENCH))
    slow = row("overhead", "case a", 10.0, 10.5, "ms/step", 1.02)
    assert slow["ratio"] == pytest.approx(1.05) and slow["ok"] is False and slow["goal"] == "<= 1.02"
    fast = row("dataloader", "case b", 1000.0, 990.0, "img/s", 0.95, better="higher")
    assert fast["ok"] is True and fast["goal"] == ">= 0.95"
    info = row("startup", "case c", 2.0, 3.0, "s", None)
    assert info["ok"] is None and info["goal"] == "-"
    table = format_table([slow, fast, info])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["benchmark", "case", "bare", "plugtrain"]
    assert lines[2].endswith("NO") and lines[3].endswith("yes") and lines[4].endswith("-")


def test_run_all_rejects_an_unknown_benchmark() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "overheda"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown benchmark(s): overheda" in proc.stderr
