"""Whether a job's time limit leaves room to reach a step boundary and write ``last.pt`` before it is cut off.

On the warning signal (``--signal NAME@LEAD``, sent LEAD seconds before the limit) the tasks stop at the next step
boundary and write ``last.pt``; so each start of the job must get through its startup (imports, build, restore) and
at least one step before the warning, and the step in flight when the warning comes must end within LEAD. What is
knowable before submission: the limit and the lead (always), and for a run that is continued (``--resume``) the
seconds its steps took (``metrics.csv``'s ``train/step_time``, a mean per epoch) and the startups its earlier SLURM
jobs took (:data:`STARTS_FILE`, written by :mod:`plugtrain.slurm.worker`). Without that history only the certain is
refused (a warning at or before the start), and the script says which estimate was used.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.atomic import write_atomic
from plugtrain.core.errors import PlugtrainError

#: The startups of the run's SLURM jobs, next to its files: ``{"starts": [{"job", "restart", "seconds"}, ...]}``.
STARTS_FILE = "slurm-starts.json"
#: How many recorded starts are kept.
KEEP_STARTS = 20


@attrs.frozen
class Estimate:
    """Seconds of one start (to the first step) and of one optimizer step, each with where it came from (``None``:
    not known)."""

    startup: float | None = None
    startup_from: str = ""
    step: float | None = None
    step_from: str = ""


def record_start(run_dir: Path, job: str, restart: int, seconds: float) -> None:
    """Add one start of a job of this run (process start to its first step) to :data:`STARTS_FILE`; best effort."""
    path = Path(run_dir) / STARTS_FILE
    starts = _starts(path)
    starts.append({"job": job, "restart": restart, "seconds": round(seconds, 3)})
    try:
        write_atomic(path, json.dumps({"starts": starts[-KEEP_STARTS:]}))
    except OSError:
        pass  # a timing record is never worth failing a run


def _starts(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    starts = data.get("starts") if isinstance(data, dict) else None
    return [s for s in starts if isinstance(s, dict) and isinstance(s.get("seconds"), (int, float))] \
        if isinstance(starts, list) else []


def history_of(plan: Any) -> Path | None:
    """The run whose records describe the job of ``plan`` (a :class:`plugtrain.core.runtime.rundir.Plan`): the one
    it continues (``--resume``); ``None`` for a new run or one started again (``--overwrite``: its spec may differ)."""
    if plan.mode != "resume" or plan.checkpoint is None:
        return None
    ckpt = Path(plan.checkpoint)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else plan.run_dir


def measured(run_dir: Path | None) -> Estimate:
    """What the records of ``run_dir`` (a run being continued; ``None`` for a new one) say: the fastest recorded
    start of its SLURM jobs, and the median over its epochs of the mean seconds per step."""
    if run_dir is None or not Path(run_dir).is_dir():
        return Estimate()
    startup = startup_from = None
    starts = _starts(Path(run_dir) / STARTS_FILE)
    if starts:
        startup = min(float(s["seconds"]) for s in starts)
        startup_from = f"the fastest of {len(starts)} start(s) recorded in {Path(run_dir) / STARTS_FILE}"
    steps = []
    path = Path(run_dir) / "metrics.csv"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    value = float(row.get("train/step_time") or "nan")
                except ValueError:
                    continue
                if value > 0:
                    steps.append(value)
    except OSError:
        pass
    step = statistics.median(steps) if steps else None
    step_from = f"the median of {len(steps)} epoch(s) of train/step_time in {path}" if steps else ""
    return Estimate(startup, startup_from or "", step, step_from)


def check(limit: int, lead: int, time_text: str, signal_text: str, estimate: Estimate) -> list[str]:
    """Refuse (one message) a time limit whose starts cannot reach a checkpoint; return the lines that say the
    estimate used (the script keeps them as comments)."""
    room = limit - lead
    if room <= 0:
        raise PlugtrainError(f"--signal {signal_text}: the warning {lead} s before the time limit comes before the job "
                             f"has trained at all (--time {time_text} is {limit} s): give a longer --time or a "
                             "shorter warning")
    known = [(what, s, src) for what, s, src in (("startup", estimate.startup, estimate.startup_from),
                                                 ("one step", estimate.step, estimate.step_from)) if s is not None]
    need = sum(s for _, s, _ in known)
    said = "; ".join(f"{what} {s:.3g} s ({src})" for what, s, src in known)
    if known and need >= room:
        raise PlugtrainError(
            f"--time {time_text}: each start of the job has {room} s before the warning ({limit} s - {lead} s of "
            f"--signal {signal_text}), less than it needs to reach its first step boundary and write last.pt: "
            f"{said}; give a --time longer than {int(lead + need)} s")
    if estimate.step is not None and estimate.step >= lead:
        raise PlugtrainError(
            f"--signal {signal_text}: the warning comes {lead} s before the time limit, but one step takes "
            f"{estimate.step:.3g} s ({estimate.step_from}): the step in flight could not end and write last.pt in "
            f"time; give a warning longer than {int(estimate.step)} s")
    lines = [f"Time budget: --time {time_text} = {limit} s; the warning ({signal_text}) leaves {room} s per start "
             "to reach a step boundary."]
    if known:
        lines.append(f"Measured: {said}.")
    missing = [what for what, s in (("startup", estimate.startup), ("step time", estimate.step)) if s is None]
    if missing:
        lines.append(f"Not known before the first job of this run: {' and '.join(missing)} (assumed to fit; "
                     "resubmissions with --resume check them against this run's records).")
    return lines
