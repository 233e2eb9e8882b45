"""plugtrain from Python: check and train specs, open finished runs to predict, in a notebook or a script.

::

    import plugtrain

    result = plugtrain.train("specs/quickstart.toml", set={"run.epochs": 2}, overwrite=True)
    result.metrics["val/accuracy"], result.best, result.run_dir

    run = plugtrain.load_run(result.run_dir)            # best.pt, the weights best.pt was chosen by
    run.predict(["digit.png"])[0]["class"]

The functions are the CLI's commands without the printing of results: ``train`` is ``plugtrain train`` of one spec
(:mod:`plugtrain.commands.train`), ``check`` is ``plugtrain check``, ``load_run`` opens a run as ``plugtrain
predict`` does (:class:`plugtrain.commands._finished_run.LoadedRun`). Bad input raises the same
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

import attrs

from plugtrain.commands._finished_run import LoadedRun
from plugtrain.core.errors import PlugtrainError

__all__ = ["LoadedRun", "Result", "check", "load_run", "train"]

@attrs.frozen
class Result:
    """A finished training run: ``metrics`` of the final epoch (``val_swa/*`` included), ``best`` (``{metric, value,
    epoch, global_step}`` of ``best.pt``, or ``None``), ``run_dir`` and ``history`` (every epoch's metrics)."""

    metrics: dict[str, float]
    best: dict[str, Any] | None
    run_dir: Path
    history: list[dict[str, float]]


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
    does (progress on stdout, SIGINT / SIGTERM write ``last.pt`` and stop); returns its :class:`Result`."""
    from plugtrain.commands import train as train_command
    from plugtrain.core.runtime import checkpoint as ckpt
    from plugtrain.core.runtime import distributed, rundir
    from plugtrain.core.spec import from_dict, resolve_dict

    overrides = _overrides(set)
    with _spec_file(spec_or_path) as path:
        spec = from_dict(resolve_dict(path, overrides))  # a bad spec fails here, before anything is built
        run_dir = rundir.run_dir_for(spec.run.output_dir, spec.run.name)
        try:
            train_command.train_one(path, overrides, None if resume is None else os.fspath(resume), overwrite,
                                     False)
        finally:
            distributed.teardown()
    state = ckpt.load(run_dir / rundir.CHECKPOINTS / "last.pt")
    history = [dict(r) for r in state.get("history") or []]
    return Result(metrics=dict(history[-1]) if history else {}, best=state.get("best"), run_dir=run_dir,
                  history=history)


def load_run(run_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
             weights: str | None = None, *, device: str | None = None) -> Any:
    """A finished run's checkpoint ready to predict, as ``plugtrain predict`` opens it: a
    :class:`~plugtrain.commands._finished_run.LoadedRun` with ``.model`` (eval mode), ``.transform(image)`` (an
    image -> the tensor the model takes), ``.predict(paths_or_arrays, top_k=5)``, ``.class_names``, ``.weights``.

    ``checkpoint``: ``"best"`` (default; ``"last"`` for ``weights="swa"``), ``"last"`` or a path. ``weights``:
    ``"model"``, ``"ema"`` or ``"swa"`` (default: what ``best.pt`` was chosen by). ``device``: ``"cpu"``,
    ``"cuda"``, ... (default: the spec's ``trainer.device``). An exported ``.onnx`` / ``.pt2`` file (with its
    sidecar) instead of a run directory gives an :class:`~plugtrain.commands.export.ExportedModel` with the same
    methods (on the CPU)."""
    from plugtrain.commands.predict import open_predictor

    return open_predictor(os.fspath(run_dir), None if checkpoint is None else os.fspath(checkpoint), weights,
                          device)


# -- specs as paths or dicts -------------------------------------------------------------------------------------------
def _overrides(values: Mapping[str, Any] | None) -> list[str]:
    """``{"optimizer.lr": 1e-3}`` -> ``["optimizer.lr=0.001"]`` (the CLI's ``--set`` texts)."""
    from plugtrain.core.spec.typecheck import toml_literal

    if values is None:
        return []
    if not isinstance(values, Mapping):
        raise PlugtrainError(f"set= takes a mapping of dotted keys to values, e.g. {{'optimizer.lr': 1e-3}}; "
                             f"got {type(values).__name__}")
    out = []
    for key, value in values.items():
        if value is None:
            raise PlugtrainError(f"set={{{key!r}: None}}: TOML has no null; leave the key out for its default")
        out.append(f"{key}={toml_literal(value)}")
    return out


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

    data = dict(spec_or_path)
    if isinstance(data.get("extends"), str):
        data["extends"] = str(Path(data["extends"]).resolve())
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
