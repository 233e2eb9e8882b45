"""The sweep file: which run spec to train, the search space, the objective, sampler, pruner and storage settings.

A sweep file names a run spec instead of being one, so that the run spec stays a contract that ``plugtrain check``
and ``plugtrain train`` accept unchanged, and every trial's spec is that file plus ``--set`` overrides, checked by the
ordinary loader (problems keep their ``file:line:col`` in the run spec; problems of sampled values point at the
parameter in the sweep file)::

    spec = "../quickstart.toml"          # the run spec every trial trains (relative to this file)

    [sweep]
    name = "digits-sweep"                # the sweep directory <run.output_dir>/<name>; default: this file's stem
    trials = 20                          # the study's total over all workers (--trials overrides)
    objective = "val/accuracy"           # default: the spec's run.primary_metric (and run.mode)
    mode = "max"
    sampler = "tpe"                      # tpe | random | grid, or { name = "tpe", startup_trials = 5 }
    pruner = "median"                    # median | successive_halving | none, or { name = "median", ... }
                                         # (each with its options: plugtrain.sweep.strategies)
    folds = 0                            # K >= 2: each trial is a K-fold cross-validation, objective the mean
    heartbeat = 60                       # seconds; a trial silent for grace_period (default 2 x) is failed, retried

    [set]                                # fixed overrides of every trial, one --set per leaf
    "run.epochs" = 4

    [params]                             # spec path = distribution
    "optimizer.lr" = { log_uniform = [1e-4, 1e-2] }
    "backbone.name" = { choice = ["resnet18", "resnet34"] }
    "optimizer.weight_decay" = { uniform = [0.0, 0.1], step = 0.01 }
    "data.batch_size" = { int = [32, 128], step = 32 }

    [[enqueue]]                          # points to try first (a known good configuration)
    "optimizer.lr" = 3e-3
    "backbone.name" = "resnet18"

Keys may be dotted (``optimizer.lr = {...}``) or quoted (``"augmentations.train[0].p" = {...}``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.sweep.strategies import KINDS, PRUNERS, SAMPLERS, Strategy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")
_DIST_OPTIONS = {"uniform": ("step",), "log_uniform": (), "int": ("step", "log"), "choice": ()}
SWEEP_KEYS = ("name", "trials", "objective", "mode", "sampler", "pruner", "folds", "seed", "heartbeat",
              "grace_period", "max_retries")
TOP_KEYS = ("spec", "sweep", "set", "params", "enqueue")


class SweepError(PlugtrainError):
    """Problems in a sweep file (each ``file:line:col: message``); exit code 2."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__("\n".join([f"plugtrain: error: {n} problem{'s' if n != 1 else ''} in the sweep:",
                                    *self.problems]))


# -- TOML values as --set text -----------------------------------------------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline), for a ``--set KEY=VALUE`` override."""
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{k if _BARE.fullmatch(str(k)) else toml_value(str(k))} = {toml_value(x)}"
                                for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    import tomli_w

    return tomli_w.dumps({"v": v}).strip()[len("v = "):]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


# -- the model -----------------------------------------------------------------------------------------------------
@attrs.define
class Param:
    """One dimension of the space: a spec key path and its distribution."""

    name: str  # the spec key path, as a --set key: "optimizer.lr", "augmentations.train[0].p"
    kind: str  # one of DISTRIBUTIONS
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: list[Any] = attrs.Factory(list)
    where: str = ""  # file:line:col of the value in the sweep file

    @property
    def encoded(self) -> bool:
        """Choices Optuna cannot store as they are (arrays, tables) are stored as their TOML text."""
        return self.kind == "choice" and not all(_scalar(c) for c in self.choices)

    def optuna_choices(self) -> list[Any]:
        return [toml_value(c) for c in self.choices] if self.encoded else list(self.choices)

    def decode(self, value: Any) -> Any:
        if self.encoded:
            return tomllib.loads(f"v = {value}")["v"]
        return value

    def suggest(self, trial: Any) -> Any:
        """The trial's value (Optuna's ``suggest_*``)."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.name, self.optuna_choices()))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "log_uniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step)

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; ``None`` for a continuous range."""
        if self.kind == "choice":
            return self.optuna_choices()
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.kind == "uniform" and self.step:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None

    def extremes(self) -> list[Any]:
        """The values a check tries: every choice, or the two ends of a range (the last point of a stepped one)."""
        if self.kind == "choice":
            return list(self.choices)
        grid = self.grid()
        if grid is not None:
            return [grid[0], grid[-1]] if len(grid) > 1 else grid
        return [self.low, self.high]

    def override(self, value: Any) -> str:
        return f"{self.name}={toml_value(value)}"

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(toml_value(c) for c in self.choices)
        extra = f", step {self.step}" if self.step else ""
        return f"{self.kind} [{self.low}, {self.high}]{extra}{' log' if self.log else ''}"

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(toml_value(value) == toml_value(c) or (_number(value) and _number(c) and value == c)
                       for c in self.choices)
        if not _number(value):
            return False
        if self.kind == "int" and (not isinstance(value, int) or (value - self.low) % (self.step or 1)):
            return False
        return self.low <= value <= self.high


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@attrs.define
class Component:
    """A sampler or pruner: its name and options."""

    name: str
    options: dict[str, Any] = attrs.Factory(dict)


@attrs.define
class Sweep:
    path: Path  # the sweep file
    display: str  # as the user named it
    spec: str  # the run spec's path (display form)
    name: str
    trials: int | None = None
    objective: str | None = None
    mode: str | None = None
    sampler: Component = attrs.Factory(lambda: Component(next(iter(SAMPLERS))))
    pruner: Component = attrs.Factory(lambda: Component(next(iter(PRUNERS))))
    folds: int = 0
    seed: int | None = None
    heartbeat: int = 60
    grace_period: int | None = None
    max_retries: int = 2
    fixed: list[tuple[str, Any, str]] = attrs.Factory(list)  # (key, value, where)
    params: list[Param] = attrs.Factory(list)
    enqueue: list[dict[str, Any]] = attrs.Factory(list)
    where: dict[str, str] = attrs.Factory(dict)  # "sweep.objective" -> file:line:col

    def fixed_overrides(self) -> list[str]:
        return [f"{k}={toml_value(v)}" for k, v, _ in self.fixed]

    def locations(self) -> dict[str, str]:
        """``--set`` text -> where it comes from in the sweep file, for the fixed overrides."""
        return {f"{k}={toml_value(v)}": f"{w}: [set] {k}" for k, v, w in self.fixed}


# -- reading -------------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, display: str, text: str) -> None:
        from plugtrain.core.spec.tomlpos import locate

        self.display = display
        self.pos = locate(text)
        self.problems: list[str] = []

    def at(self, path: tuple, value: bool = True) -> str:
        p = path
        while p and p not in self.pos:
            p = p[:-1]
        if not p:
            return f"{self.display}:1:1"
        pos = self.pos[p]
        line, col = (pos.value_line, pos.value_col) if value and p == path else (pos.line, pos.col)
        return f"{self.display}:{line}:{col}"

    def add(self, path: tuple, message: str, value: bool = True) -> None:
        self.problems.append(f"{self.at(path, value)}: {message}")


def _leaves(table: dict[str, Any], prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(path, value)`` for every non-table value, depth first."""
    out: list[tuple[tuple, Any]] = []
    for k, v in table.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, (*prefix, k))
        else:
            out.append(((*prefix, k), v))
    return out


def _distributions(table: dict[str, Any], prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(path, distribution table)``: a table whose values are all non-tables is a distribution."""
    out: list[tuple[tuple, Any]] = []
    for k, v in table.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            out += _distributions(v, (*prefix, k))
        else:
            out.append(((*prefix, k), v))
    return out


def _spec_key(r: Any, table: str, kpath: tuple) -> str | None:
    """The spec path ``kpath`` of ``[table]`` as ``--set`` text, or None (reported) when it is not a key path."""
    from plugtrain.core.spec.overrides import OverrideError, parse_key

    key = _key_text(kpath)
    try:
        parse_key(key)
    except OverrideError as exc:
        r.add((table, *kpath), f"[{table}] {key}: {exc}", value=False)
        return None
    return key


def _key_text(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def read(path: str | os.PathLike[str]) -> Sweep:
    """Read and check a sweep file's structure (not yet against the run spec: see :func:`check`)."""
    display = str(path)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError([f"{display}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError([f"{display}: cannot read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{display}:{m.group(1)}:{m.group(2)}" if m else display
        raise SweepError([f"{where}: TOML syntax error: {re.sub(r' ?[(]at line.*[)]', '', str(exc))}"]) from None
    r = _Reader(display, text)
    for k in data:
        if k not in TOP_KEYS:
            hint = did_you_mean(k, TOP_KEYS)
            r.add((k,), f"unknown key {k!r} in a sweep file.{hint} A sweep file has: spec = \"RUN_SPEC.toml\", "
                        "[sweep], [set], [params], [[enqueue]] (the run spec itself goes in the file `spec` names)",
                  value=False)
    spec = data.get("spec")
    if not isinstance(spec, str) or not spec.strip():
        r.add(("spec",), 'a sweep file names its run spec: spec = "path/to/spec.toml" (relative to the sweep file)')
        spec_display = ""
    else:
        spec_path = (p.parent / spec)
        spec_display = os.path.normpath(os.path.join(os.path.dirname(display), spec))
        if not spec_path.is_file():
            r.add(("spec",), f"spec = {spec!r}: no such file {spec_display!r}")
        else:
            wrong = _not_a_run_spec(p, spec_path)
            if wrong:
                r.add(("spec",), f"spec = {spec!r} {wrong}; it must name the run spec every trial trains (a file with "
                                 "[run], [data], [backbone], ... that `plugtrain check` accepts)")
    sw = Sweep(path=p, display=display, spec=spec_display, name=p.stem)
    _read_settings(r, data.get("sweep", {}), sw)
    # [set]
    fixed = data.get("set", {})
    if not isinstance(fixed, dict):
        r.add(("set",), "[set] is a table of spec paths and values, e.g. \"run.epochs\" = 4")
        fixed = {}
    for kpath, value in _leaves(fixed):
        key = _spec_key(r, "set", kpath)
        if key is not None:
            sw.fixed.append((key, value, r.at(("set", *kpath))))
    # [params]
    params = data.get("params", {})
    if not isinstance(params, dict) or not params:
        r.add(("params",), "[params] is the search space: at least one spec path with a distribution, e.g. "
                           "\"optimizer.lr\" = { log_uniform = [1e-4, 1e-2] }", value=False)
        params = {}
    for kpath, dist in _distributions(params):
        key = _spec_key(r, "params", kpath)
        if key is None:
            continue
        param = _param(r, ("params", *kpath), key, dist)
        if param is not None:
            if any(q.name == key for q in sw.params):
                r.add(("params", *kpath), f"[params] {key} is given twice", value=False)
            sw.params.append(param)
    fixed_keys = {k for k, _, _ in sw.fixed}
    for q in sw.params:
        if q.name in fixed_keys:
            r.problems.append(f"{q.where}: [params] {q.name} is also fixed in [set]: give it in one of them")
    # [[enqueue]]
    enqueue = data.get("enqueue", [])
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        r.add(("enqueue",), "[[enqueue]] is an array of tables, each giving a value to every parameter")
        enqueue = []
    names = {q.name: q for q in sw.params}
    for i, point in enumerate(enqueue):
        values: dict[str, Any] = {}
        for kpath, value in _leaves(point):
            key = _key_text(kpath)
            q = names.get(key)
            if q is None:
                r.add(("enqueue", i, *kpath), f"[[enqueue]] {key} is not a parameter of [params]."
                      + did_you_mean(key, names), value=False)
            elif not q.contains(value):
                r.add(("enqueue", i, *kpath), f"[[enqueue]] {key} = {toml_value(value)} is outside its distribution "
                      f"({q.describe()})")
            else:
                values[key] = toml_value(value) if q.encoded else value
        missing = [k for k in names if k not in values and not any(_key_text(kp) == k for kp, _ in _leaves(point))]
        if missing:
            r.add(("enqueue", i), f"[[enqueue]] point {i + 1} gives no value to {', '.join(missing)}", value=False)
        sw.enqueue.append(values)
    if SAMPLERS[sw.sampler.name].finite_space:
        for q in sw.params:
            if q.grid() is None:
                r.problems.append(f"{q.where}: [params] {q.name}: the {sw.sampler.name} sampler needs a finite set of "
                                  "values: use choice, int, or uniform with a step")
    if r.problems:
        raise SweepError(r.problems)
    return sw


def _not_a_run_spec(sweep_path: Path, spec_path: Path) -> str | None:
    """Why the file a sweep's ``spec =`` names is not a run spec (this sweep file, another sweep file, a TOML file
    without a run spec's sections), or ``None``. A run spec with a syntax error is left to the spec loader, which
    says where."""
    from plugtrain.core.spec.model import SECTIONS

    try:
        if spec_path.resolve() == sweep_path.resolve() or spec_path.samefile(sweep_path):
            return "names this sweep file itself"
        data = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None if spec_path.suffix == ".toml" else "names a file that is not TOML"
    if isinstance(data.get("spec"), str) and ("params" in data or "sweep" in data):
        return "names another sweep file (a sweep file names a run spec, never a sweep)"
    if "extends" not in data and not any(k in SECTIONS for k in data):
        found = ", ".join(f"[{k}]" if isinstance(v, dict) else k for k, v in data.items()) or "nothing"
        return f"names a TOML file that is not a run spec (it has {found}, none of a run spec's sections)"
    return None


def _read_settings(r: _Reader, s: Any, sw: Sweep) -> None:
    if not isinstance(s, dict):
        r.add(("sweep",), "[sweep] is a table of settings")
        return
    for k in s:
        if k not in SWEEP_KEYS:
            r.add(("sweep", k), f"unknown key {k!r} in [sweep].{did_you_mean(k, SWEEP_KEYS)} Accepted: "
                                f"{', '.join(SWEEP_KEYS)}", value=False)
    for k in s:
        sw.where[f"sweep.{k}"] = r.at(("sweep", k))

    def integer(key: str, lo: int) -> int | None:
        v = s.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            r.add(("sweep", key), f"[sweep] {key} must be an integer >= {lo}, not {toml_value(v)}")
            return None
        return v

    if "name" in s:
        name = s["name"]
        if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name in (".", ".."):
            r.add(("sweep", "name"), "[sweep] name is the sweep directory's name: a plain non-empty name")
        else:
            sw.name = name
    sw.trials = integer("trials", 1)
    if "objective" in s:
        if not isinstance(s["objective"], str) or not s["objective"]:
            r.add(("sweep", "objective"), '[sweep] objective is a metric name, e.g. "val/accuracy"')
        else:
            sw.objective = s["objective"]
    if "mode" in s:
        if s["mode"] not in ("max", "min"):
            r.add(("sweep", "mode"), f'[sweep] mode must be "max" or "min", not {toml_value(s["mode"])}')
        else:
            sw.mode = s["mode"]
    folds = integer("folds", 0)
    if folds is not None:
        if folds == 1:
            r.add(("sweep", "folds"), "[sweep] folds = 1 is no cross-validation: use 0 (off) or K >= 2")
        sw.folds = folds
    if "seed" in s:
        sw.seed = integer("seed", 0)
    sw.heartbeat = integer("heartbeat", 1) or sw.heartbeat
    sw.grace_period = integer("grace_period", 1)
    retries = integer("max_retries", 0)
    sw.max_retries = sw.max_retries if retries is None else retries
    sw.sampler = _component(r, s, "sampler") or sw.sampler
    sw.pruner = _component(r, s, "pruner") or sw.pruner


def _component(r: _Reader, s: dict[str, Any], key: str) -> Component | None:
    """``[sweep] sampler`` / ``pruner`` (a name, or a table with ``name`` and options), checked against its
    declaration in :mod:`.strategies`: the name, each option's name, type and lower bound."""
    known: dict[str, Strategy] = KINDS[key]
    v = s.get(key, next(iter(known)))
    opts: dict[str, Any] = {}
    if isinstance(v, dict):
        opts = dict(v)
        v = opts.pop("name", None)
    if not isinstance(v, str) or v not in known:
        hint = did_you_mean(v, known) if isinstance(v, str) else ""
        r.add(("sweep", key), f"[sweep] {key} must be one of {', '.join(known)} (or a table with name = ... and its "
                              f"options), not {toml_value(v) if v is not None else 'a table without name'}.{hint}")
        return None
    strategy = known[v]
    for o, ov in opts.items():
        option = strategy.option(o)
        if option is None:
            accepted = ", ".join(strategy.option_names) or "none"
            r.add(("sweep", key, o), f"[sweep] {key}: unknown option {o!r} of {v}."
                                     f"{did_you_mean(o, strategy.option_names)} Accepted: {accepted}", value=False)
        elif (problem := option.problem(ov)) is not None:
            r.add(("sweep", key, o), f"[sweep] {key}: {problem}")
    return Component(v, opts)


def _param(r: _Reader, path: tuple, key: str, dist: Any) -> Param | None:
    where = r.at(path)
    example = ('e.g. { log_uniform = [1e-4, 1e-2] }, { uniform = [0.0, 0.5], step = 0.1 }, { int = [16, 64], '
               'step = 16 } or { choice = ["resnet18", "resnet34"] }')
    if not isinstance(dist, dict) or not dist:
        r.add(path, f"[params] {key} needs a distribution, {example}")
        return None
    kinds = [k for k in dist if k in DISTRIBUTIONS]
    for k in dist:
        if k not in DISTRIBUTIONS and not any(k in _DIST_OPTIONS[d] for d in kinds):
            allowed = sorted(set(DISTRIBUTIONS) | {o for d in kinds for o in _DIST_OPTIONS[d]})
            r.add((*path, k), f"[params] {key}: unknown key {k!r}.{did_you_mean(k, allowed)} A distribution is one "
                              f"of {', '.join(DISTRIBUTIONS)} (with step / log where they apply)", value=False)
            return None
    if len(kinds) != 1:
        r.add(path, f"[params] {key} needs exactly one of {', '.join(DISTRIBUTIONS)}, {example}")
        return None
    kind = kinds[0]
    vals = dist[kind]
    if kind == "choice":
        if not isinstance(vals, list) or not vals:
            r.add((*path, kind), f"[params] {key}: choice is a non-empty array of values")
            return None
        texts = [toml_value(v) for v in vals]
        if len(set(texts)) != len(texts):
            r.add((*path, kind), f"[params] {key}: choice lists a value twice")
            return None
        return Param(key, kind, choices=list(vals), where=where)
    if not isinstance(vals, list) or len(vals) != 2 or not all(_number(v) for v in vals):
        r.add((*path, kind), f"[params] {key}: {kind} is [low, high], two numbers")
        return None
    lo, hi = vals
    step, log = dist.get("step"), dist.get("log", False)
    if kind == "int":
        if not all(isinstance(v, int) for v in vals):
            r.add((*path, kind), f"[params] {key}: int takes integer bounds (use uniform for floats)")
            return None
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            r.add((*path, "step"), f"[params] {key}: the step of an int range is an integer >= 1")
            return None
        if not isinstance(log, bool):
            r.add((*path, "log"), f"[params] {key}: log is true or false")
            return None
        if log and (step or 1) != 1:
            r.add((*path, "log"), f"[params] {key}: a log int range takes no step")
            return None
    if kind == "uniform" and step is not None and (not _number(step) or step <= 0):
        r.add((*path, "step"), f"[params] {key}: step must be a number > 0")
        return None
    if not lo < hi:
        r.add((*path, kind), f"[params] {key}: {kind} = [{lo}, {hi}]: low must be below high")
        return None
    if (kind == "log_uniform" or log) and lo <= 0:
        r.add((*path, kind), f"[params] {key}: a log range needs low > 0, not {lo}")
        return None
    if kind == "uniform" and step is not None and step > hi - lo:
        r.add((*path, "step"), f"[params] {key}: step {step} is wider than the range [{lo}, {hi}]")
        return None
    if kind == "int" and step and (hi - lo) % step:
        r.add((*path, "step"), f"[params] {key}: the range [{lo}, {hi}] is not a whole number of steps of {step}")
        return None
    if kind == "uniform":
        lo, hi = float(lo), float(hi)
    return Param(key, kind, low=lo, high=hi, step=step, log=bool(log), where=where)


# -- checking against the run spec ------------------------------------------------------------------------------
def relocate(problems: list[str], spec_display: str, places: dict[str, str]) -> list[str]:
    """Point the problems that an override caused at the place in the sweep file the override came from."""
    out = []
    for pr in problems:
        for text, where in places.items():
            head = f"{spec_display}: --set {text}: "
            if pr.startswith(head):
                pr = f"{where}: {pr[len(head):]}"
                break
            if f"--set {text}" in pr:
                pr = pr.replace(f"--set {text}", where.split(": ", 1)[-1] + f" ({where.split(': ', 1)[0]})")
                break
        out.append(pr)
    return out


def check(sw: Sweep, cli_overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Check the run spec with the fixed overrides, then every choice and both ends of every range, and the
    objective; raise :class:`SweepError` with every problem. Returns the base spec (fixed overrides applied)."""
    from plugtrain.core.spec import load_spec, resolve

    base = [*sw.fixed_overrides(), *cli_overrides]
    places = sw.locations()
    res = resolve(sw.spec, base)
    if res.problems:
        raise SweepError(relocate(res.problems, sw.spec, places))
    spec = load_spec(sw.spec, base)
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for q in sw.params:
        for value in q.extremes():
            text = q.override(value)
            got = resolve(sw.spec, [*base, text])
            where = f"{q.where}: [params] {q.name} = {toml_value(value)}"
            for raw, pr in zip(got.problems, relocate(got.problems, sw.spec, {text: where}), strict=True):
                core = raw.removeprefix(f"{sw.spec}: --set {text}: ")
                if (q.name, core) not in seen:  # a problem every value has (a misspelt key) is reported once
                    seen.add((q.name, core))
                    problems.append(pr)
    objective = sw.objective or spec.primary_metric
    keys = metric_names(spec)
    if keys is not None and objective not in keys:
        where = sw.where.get("sweep.objective", f"{sw.spec}: [run] primary_metric")
        problems.append(f"{where}: the objective {objective!r} is not a metric of these runs."
                        + did_you_mean(objective, keys) + f" Known: {', '.join(keys)}")
    if problems:
        raise SweepError(problems)
    return spec


def metric_names(spec: Any) -> list[str] | None:
    """The metric keys a run of ``spec`` reports per epoch (as the runtime names them), without building anything;
    ``None`` when they cannot be known here."""
    try:
        from plugtrain.core.registry import get_registry
        from plugtrain.core.runtime.build import metric_keys
        from plugtrain.core.spec.model import ComponentSpec
        from plugtrain.core.task import required_metrics

        specs = list(spec.metric_specs)
        always = required_metrics(spec.run.task, spec.task_object, get_registry())  # as build_metrics puts first
        specs[:0] = [ComponentSpec(n) for n in always if not any(m.name == n for m in specs)]
        names: list[str] = []
        for m in specs:
            key = m.name.split(":")[-1]
            n = 2
            while key in names:
                key, n = f"{m.name.split(':')[-1]}_{n}", n + 1
            names.append(key)
        return metric_keys(spec, names)
    except Exception:  # noqa: BLE001 - a best-effort early check; the run checks it again when built
        return None
