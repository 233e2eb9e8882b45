"""What a sweep leaves: the trial table (``plugtrain sweep status``), ``best.toml``, Optuna's plots as PNG files, and
the objective per trial in TensorBoard (``<sweep_dir>/tb``, tag ``sweep/objective`` at step = trial number).

Everything is read from the study (the database), so any worker or any machine that reaches the storage can write
it; a trial's resolved spec comes from its run directory when it is on this machine, else it is rebuilt from the
sweep file and the overrides the trial recorded.
"""

from __future__ import annotations

import datetime
import json
import math
import warnings
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.atomic import atomic_open, write_atomic
from plugtrain.core.errors import PlugtrainError

SWEEP_JSON = "sweep.json"
#: Optuna's plot functions (optuna.visualization.matplotlib) and the file each one is saved to.
PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def read_meta(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlugtrainError(f"{sweep_dir}: not a sweep directory (no {SWEEP_JSON}; `plugtrain sweep SWEEP_FILE` "
                             "writes it)") from None
    except (OSError, ValueError) as exc:
        raise PlugtrainError(f"{path}: cannot read: {exc}") from None


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


# -- counting --------------------------------------------------------------------------------------------------------
def retried_numbers(trials: list[Any]) -> dict[int, int]:
    """original trial number -> the number of the trial that retried it (the latest retry)."""
    out: dict[int, int] = {}
    for t in trials:
        for n in t.system_attrs.get("retry_history", []) or []:
            out[int(n)] = max(out.get(int(n), -1), t.number)
    return out


def tally(trials: list[Any]) -> dict[str, int]:
    """``done`` (counted towards the study total: complete, pruned, and failed trials that were not retried),
    ``running``, ``waiting``, and the count per state."""
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    out = {"done": 0, "running": 0, "waiting": 0, "complete": 0, "pruned": 0, "failed": 0, "retried": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
            out["done"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
            out["done"] += 1
        elif t.state == TrialState.FAIL:
            if t.number in retried:
                out["retried"] += 1
            else:
                out["failed"] += 1
                out["done"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    return out


# -- the table ---------------------------------------------------------------------------------------------------------
def _seconds(t: Any) -> float | None:
    start, end = t.datetime_start, t.datetime_complete
    if start is None:
        return None
    if end is None:
        end = datetime.datetime.now()
    return (end - start).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def ordered(trials: list[Any], mode: str) -> list[Any]:
    """Best first: complete trials by value, then pruned (by their last reported value), running, waiting, failed."""
    from optuna.trial import TrialState

    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3,
            TrialState.FAIL: 4}
    sign = -1.0 if mode == "max" else 1.0

    def key(t: Any) -> tuple:
        value = t.value if t.state == TrialState.COMPLETE else last_reported(t)
        v = sign * value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf
        return (rank.get(t.state, 5), v, t.number)

    return sorted(trials, key=key)


def last_reported(t: Any) -> float | None:
    if not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def rows(trials: list[Any], mode: str) -> list[dict[str, Any]]:
    """One dict per trial, best first (the table and ``--json``)."""
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    out = []
    for t in ordered(trials, mode):
        state = t.state.name
        if t.state == TrialState.FAIL and t.number in retried:
            state = f"FAIL (retried as {retried[t.number]})"
        elif t.system_attrs.get("failed_trial") is not None:
            state = f"{state} (retry of {t.system_attrs['failed_trial']})"
        value = t.value if t.state == TrialState.COMPLETE else None
        if t.state == TrialState.PRUNED:
            value = last_reported(t)
        out.append({
            "trial": t.number,
            "state": state,
            "params": dict(t.params),
            "objective": value,
            "epochs": t.user_attrs.get("epochs"),
            "seconds": _seconds(t),
            "worker": t.user_attrs.get("worker"),
            "start": t.datetime_start.isoformat() if t.datetime_start else None,
            "end": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "error": t.user_attrs.get("error"),
        })
    return out


def print_status(study: Any, meta: dict[str, Any], as_json: bool = False) -> None:
    trials = study.get_trials(deepcopy=False)
    mode = meta.get("mode", "max")
    table = rows(trials, mode)
    if as_json:
        console.print_json({"sweep": meta.get("name"), "objective": meta.get("objective"), "mode": mode,
                            "counts": tally(trials), "trials": table})
        return
    c = tally(trials)
    total = meta.get("trials")
    objective = meta.get("objective", "objective")
    title = (
        f"sweep {meta.get('name')}: {c['done']} of {total if total else '?'} trials done ({c['complete']} complete, "
        f"{c['pruned']} pruned, {c['failed']} failed, {c['retried']} retried, {c['running']} running); objective "
        f"{objective} ({mode})")
    if not console.is_tty():
        console.echo(title)
    console.table(
        title,
        ["trial", "state", "params", objective, "epochs", "time"],
        [(r["trial"], r["state"], ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()),
          _fmt(r["objective"]) if r["objective"] is not None else "-",
          r["epochs"] if r["epochs"] is not None else "-", _duration(r["seconds"])) for r in table])


# -- best.toml ---------------------------------------------------------------------------------------------------
def best_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    return study.best_trial


def write_best(study: Any, sweep_dir: Path, meta: dict[str, Any]) -> Path | None:
    """``best.toml``: the best trial's resolved spec, renamed ``<sweep>-best`` in the spec's own output_dir, so that
    ``plugtrain train best.toml`` trains it as is (without folds: the full train split)."""
    from plugtrain.core.spec.loader import HEADER, dumps_dict

    t = best_trial(study)
    if t is None:
        return None
    data = _trial_spec(t, sweep_dir, meta)
    data["run"]["name"] = f"{meta['name']}-best"
    data["run"]["output_dir"] = meta.get("output_dir", data["run"].get("output_dir", "runs"))
    params = ", ".join(f"{k} = {_fmt(v)}" for k, v in t.params.items())
    head = (f"# The best trial of sweep {meta['name']!r}: trial {t.number}, {meta.get('objective')} = {t.value:.6g}"
            f" ({meta.get('mode')}).\n# Its parameters: {params}.\n# Written by plugtrain sweep; train it with "
            "`plugtrain train best.toml`.\n")
    from plugtrain.core.spec.model import SECTIONS

    ordered_data = {k: data[k] for k in SECTIONS if k in data and data[k] != []}
    text = head + dumps_dict(ordered_data).removeprefix(HEADER)
    path = Path(sweep_dir) / "best.toml"
    write_atomic(path, text)
    return path


def _trial_spec(t: Any, sweep_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The resolved spec dict of trial ``t``: its run directory's spec.toml, else rebuilt from the sweep file."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    run_dir = Path(sweep_dir) / f"trial-{t.number:04d}"
    for candidate in (run_dir / "spec.toml", run_dir / "fold-1" / "spec.toml"):
        if candidate.is_file():
            try:
                return tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError):
                break
    spec_path = meta.get("spec")
    if not spec_path or not Path(spec_path).is_file():
        raise PlugtrainError(f"cannot write best.toml: trial {t.number}'s run directory {run_dir} is not on this "
                             f"machine and the run spec {spec_path!r} is not either")
    from plugtrain.core.spec import load_spec, to_dict

    overrides = [*meta.get("overrides", []), *t.user_attrs.get("overrides", [])]
    return to_dict(load_spec(spec_path, overrides))


# -- plots -------------------------------------------------------------------------------------------------------
def write_plots(study: Any, sweep_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib plots as ``<sweep_dir>/<name>.png``; ``{name: path or why it was skipped}``."""
    from optuna.trial import TrialState

    out: dict[str, str] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {name: "skipped: no complete trial yet" for name in PLOTS}
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    for name, fn_name in PLOTS.items():
        if name == "param_importances" and len(complete) < 2:
            out[name] = "skipped: needs at least 2 complete trials"
            continue
        path = Path(sweep_dir) / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, fn_name)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format="png", dpi=100)
            plt.close(fig)
            out[name] = str(path)
        except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn (e.g. no variance) is not fatal
            plt.close("all")
            out[name] = f"skipped: {type(exc).__name__}: {exc}"
    return out


def write_all(study: Any, sweep_dir: Path, meta: dict[str, Any]) -> None:
    """best.toml and the plots, with one line each."""
    try:
        best = write_best(study, sweep_dir, meta)
    except PlugtrainError as exc:
        console.echo(f"sweep: best.toml not written: {exc}")
        best = None
    if best is not None:
        console.echo(f"sweep: best trial's spec: {best}")
    for name, what in write_plots(study, sweep_dir).items():
        console.echo(f"sweep: {name}: {what}")


class ObjectiveWriter:
    """The objective of each complete trial to ``<sweep_dir>/tb`` (one event file per worker)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.log_dir = Path(sweep_dir) / "tb"
        self.writer: Any = None

    def add(self, number: int, value: float) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_scalar("sweep/objective", value, number)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
