"""plugtrain from Python: check and train specs, open finished runs to predict, in a notebook or a script.

::

    import plugtrain

    result = plugtrain.train("specs/quickstart.toml", set={"run.epochs": 2}, overwrite=True)
    result.metrics["val/accuracy"], result.best, result.run_dir

    run = plugtrain.load_run(result.run_dir)            # best.pt, the weights best.pt was chosen by
    run.predict(["digit.png"])[0]["class"]

The functions are the CLI's commands without the printing of results: ``train`` is ``plugtrain train`` of one spec
(the engine, :func:`plugtrain.core.runtime.session.run`), ``check`` is ``plugtrain check``, ``load_run`` opens a run
as ``plugtrain predict`` does (:class:`plugtrain.inference.LoadedRun`). Bad input raises the same
:class:`~plugtrain.core.errors.PlugtrainError` (a :class:`~plugtrain.core.spec.SpecError` for a spec) with the same
message the CLI prints; a training run that fails raises :class:`~plugtrain.core.errors.TrainingFailed`.

A spec is a path, or a dict of the TOML's tables (``{"run": {...}, "data": {...}, ...}``). A dict is written to a
temporary TOML file and loaded like any spec (so it is checked the same way; a relative ``extends`` is relative to
the working directory); its problems are located as ``<spec dict>`` instead of ``file:line:col``. ``set`` takes the
CLI's ``--set`` overrides as a mapping of dotted keys to Python values: ``{"optimizer.lr": 1e-3,
"backbone.name": "resnet10t"}``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError, Stopped
from plugtrain.core.runtime.session import RunResult
from plugtrain.inference import LoadedRun

__all__ = ["LoadedRun", "Result", "check", "load_run", "train"]

#: A finished training run (:class:`plugtrain.core.runtime.session.RunResult`, the one result of every entry point):
#: ``metrics`` of the final epoch (``val_swa/*`` included), ``best`` (``{metric, value, epoch, global_step}`` of
#: ``best.pt``, or ``None``), ``run_dir``, ``history`` (every epoch's metrics), and ``epochs``, ``stop_reason``,
#: ``seconds``, ``exit_reason``.
Result = RunResult


def check(spec_or_path: str | os.PathLike[str] | Mapping[str, Any], set: Mapping[str, Any] | None = None) -> Any:
    """Load and validate a spec (``extends`` and ``set`` applied) as ``plugtrain check`` does; returns the typed
    :class:`~plugtrain.core.spec.RunSpec`, or raises :class:`~plugtrain.core.spec.SpecError` listing every problem."""
    from plugtrain.core.spec import load_spec

    overrides = _overrides(set)
    with _spec_file(spec_or_path) as path:
        return load_spec(path, overrides)


def train(spec_or_path: str | os.PathLike[str] | Mapping[str, Any], set: Mapping[str, Any] | None = None,
          resume: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Result:
    """Train one spec in this process, as ``plugtrain train SPEC [--set ...] [--resume auto|PATH] [--overwrite]``
    does (progress on stdout); returns its :class:`Result`.

    SIGINT (Ctrl-C) writes ``last.pt`` at the next step boundary and raises :class:`KeyboardInterrupt` (a second one
    raises it at once); SIGTERM does the same and raises ``SystemExit(143)``. The process-wide state the run changes
    (RNGs, torch's determinism and backend flags, threads, default dtype, warning filters, logger levels, environment
    variables) is put back as it was when ``train`` returns or raises (:func:`_caller_state`)."""
    from plugtrain.core.runtime import distributed, session

    overrides = _overrides(set)
    with _spec_file(spec_or_path) as path, _caller_state():
        try:
            return session.run(path, overrides, resume=None if resume is None else os.fspath(resume),
                               overwrite=overwrite)
        except Stopped as exc:  # last.pt is written: the signal's own exception, not a private one
            raise _signal_exception(exc) from None
        finally:
            distributed.teardown()


def load_run(run_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
             weights: str | None = None, *, device: str | None = None) -> Any:
    """A finished run's checkpoint ready to predict, as ``plugtrain predict`` opens it: a
    :class:`~plugtrain.inference.LoadedRun` with ``.model`` (eval mode), ``.transform(image)`` (an
    image -> the tensor the model takes), ``.predict(paths_or_arrays, top_k=5)``, ``.class_names``, ``.weights``.

    ``checkpoint``: ``"best"`` (default; ``"last"`` for ``weights="swa"``), ``"last"`` or a path. ``weights``:
    ``"model"``, ``"ema"`` or ``"swa"`` (default: what ``best.pt`` was chosen by). ``device``: ``"cpu"``,
    ``"cuda"``, ... (default: the spec's ``trainer.device``). An exported ``.onnx`` / ``.pt2`` file (with its
    sidecar) instead of a run directory gives an :class:`~plugtrain.inference.ExportedModel` with the same
    methods (on the CPU)."""
    from plugtrain.inference import open_model

    return open_model(run_dir, checkpoint, weights, device)


# -- the caller's process state ----------------------------------------------------------------------------------------
def _signal_exception(exc: Stopped) -> BaseException:
    """What a stopping signal raises in the caller: ``KeyboardInterrupt`` for SIGINT (as Python's own default
    handler would), ``SystemExit(128 + signum)`` otherwise (SIGTERM: the CLI's exit code)."""
    import signal

    if exc.checkpoint:
        then = f"; checkpoint {exc.checkpoint}; continue with resume='auto'"
    else:  # stopped before the first checkpoint: there is nothing to continue
        then = "; no checkpoint was written yet; start again with overwrite=True"
    text = f"interrupted by {signal.Signals(exc.signum).name} at step {exc.step}{then}"
    if exc.signum == signal.SIGINT:
        return KeyboardInterrupt(text)
    return SystemExit(128 + exc.signum)


@contextlib.contextmanager
def _caller_state() -> Iterator[None]:
    """Put back the process-wide state a run changes: the ``random``, NumPy and torch RNGs (CPU, CUDA, MPS), torch's
    deterministic-algorithms mode, ``torch.backends`` cudnn / matmul flags, float32 matmul precision, default dtype,
    number of threads, grad mode, warning filters, the levels of existing loggers and the environment variables.

    On a machine with CUDA this initialises CUDA in the caller (its RNG cannot be read otherwise)."""
    import logging
    import random
    import warnings

    import numpy as np
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    py_rng, np_rng, torch_rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    mps = getattr(torch, "mps", None)
    mps_rng = mps.get_rng_state() if mps is not None and torch.backends.mps.is_available() else None
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    backends = (cudnn.enabled, cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
                matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)
    precision, dtype, threads, grad = (torch.get_float32_matmul_precision(), torch.get_default_dtype(),
                                       torch.get_num_threads(), torch.is_grad_enabled())
    manager = logging.Logger.manager
    levels = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level, environ = logging.getLogger().level, dict(os.environ)
    try:
        with warnings.catch_warnings():  # the filters (and showwarning) as they were
            yield
    finally:
        for key in [k for k in os.environ if k not in environ]:
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        logging.getLogger().setLevel(root_level)
        for name, level in levels.items():
            lg = manager.loggerDict.get(name)
            if isinstance(lg, logging.Logger) and lg.level != level:
                lg.setLevel(level)
        torch.set_grad_enabled(grad)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(precision)
        (cudnn.enabled, cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
         matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction) = backends
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if mps_rng is not None:
            mps.set_rng_state(mps_rng)


# -- specs as paths or dicts -------------------------------------------------------------------------------------------
def _overrides(values: Mapping[str, Any] | None) -> list[str]:
    """``{"optimizer.lr": 1e-3}`` -> ``["optimizer.lr=0.001"]`` (the CLI's ``--set`` texts)."""
    from plugtrain.core.spec.typecheck import toml_literal

    if values is None:
        return []
    if not isinstance(values, Mapping):
        raise PlugtrainError(f"set= takes a mapping of dotted keys to values, e.g. {{'optimizer.lr': 1e-3}}; "
                             f"got {type(values).__name__}")
    out, problems = [], []
    for key, value in values.items():
        if not isinstance(key, str):
            problems.append(f"set= key {key!r} is not a dotted key path (a string such as 'optimizer.lr')")
            continue
        problems += [f"set={{{key!r}: ...}}: {key}{_tail(path)}{why}" for path, why in _not_toml(value, ())]
        out.append(f"{key}={toml_literal(value)}")
    if problems:
        raise PlugtrainError("; ".join(problems))
    return out


def _not_toml(value: Any, path: tuple) -> list[tuple[tuple, str]]:
    """``(key path, why)`` for every part of ``value`` that TOML cannot hold (``None`` above all: TOML has no null)."""
    import datetime

    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            if isinstance(k, str):
                out += _not_toml(v, (*path, k))
            else:
                out.append((path, f": the key {k!r} is not a string (TOML keys are strings)"))
        return out
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _not_toml(v, (*path, i))]
    if value is None:
        where = "remove the item" if path and isinstance(path[-1], int) else "omit the key (its default applies)"
        return [(path, f" is None, which has no TOML form (TOML has no null): {where}")]
    if isinstance(value, (str, int, float, datetime.date, datetime.time)):
        return []
    return [(path, f" is a {type(value).__name__}, which has no TOML form (TOML values are strings, numbers, booleans, "
                   "dates, arrays and tables)")]


def _tail(path: tuple) -> str:
    """``.a[0]`` for ``("a", 0)``: a key path that continues one already written."""
    from plugtrain.core.spec.tomlpos import format_path

    text = format_path(path)
    return text if not text or text.startswith("[") else "." + text


@contextlib.contextmanager
def _spec_file(spec_or_path: Any) -> Iterator[str]:
    """The path of the spec: a path as given; a dict written to a temporary TOML file for the time of the block (its
    problems are located as ``<spec dict>``)."""
    if isinstance(spec_or_path, (str, os.PathLike)):
        yield os.fspath(spec_or_path)
        return
    if not isinstance(spec_or_path, Mapping):
        raise PlugtrainError(f"a spec is a path or a dict of its tables, not {type(spec_or_path).__name__}")
    import tempfile

    import tomli_w

    from plugtrain.core.spec import SpecError
    from plugtrain.core.spec.tomlpos import format_path

    data = dict(spec_or_path)
    if isinstance(data.get("extends"), str):
        data["extends"] = str(Path(data["extends"]).resolve())
    bad = _not_toml(data, ())
    if bad:  # say which key: tomli_w's own message names only the type
        raise SpecError([f"<spec dict>: {format_path(path) or 'the spec'}{why}" for path, why in bad])
    with tempfile.TemporaryDirectory(prefix="plugtrain-spec-") as tmp:
        path = Path(tmp) / "spec.toml"
        try:
            path.write_text(tomli_w.dumps(data), encoding="utf-8")
        except (TypeError, ValueError) as exc:
            raise PlugtrainError(f"<spec dict>: not a TOML document: {exc}") from None
        where = re.compile(re.escape(str(path)) + r"(?::\d+:\d+)?")
        try:
            yield str(path)
        except SpecError as exc:
            raise SpecError([where.sub("<spec dict>", p) for p in exc.problems]) from None
