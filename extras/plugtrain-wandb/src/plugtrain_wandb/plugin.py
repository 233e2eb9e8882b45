"""The plugtrain plugin of this package: the logger ``wandb``.

plugtrain finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.plugtrain]
    wandb = "plugtrain_wandb.plugin"

Importing it is cheap: ``wandb`` itself is imported only when the logger is built (rank 0, at the start of a run),
so ``plugtrain list`` stays as fast as without this package.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Literal

from plugtrain import Component, hookimpl
from plugtrain.core.errors import first_line as _first_line
from plugtrain.plugins.tracking import ClosedOnce, embedding_matrix
from plugtrain.plugins.tracking import number as _number
from plugtrain.plugins.tracking import read_state as _read_json
from plugtrain.plugins.tracking import write_state as _write_json

#: The file in the run directory that names the W&B run, so that a resumed run continues it.
STATE_FILE = "wandb.json"
DEFAULT_PROJECT = "plugtrain"
_PREFIX = "plugtrain-wandb"


def _warn(message: str) -> None:
    print(f"{_PREFIX}: warning: {message}", file=sys.stderr, flush=True)


class WandbLogger(ClosedOnce):
    """Logs the run to Weights & Biases: the resolved spec as config, every metric at its step (the per-step
    ``step/*`` ones too), images.

    ``mode``: ``"online"`` (needs ``wandb login`` or ``WANDB_API_KEY``), ``"offline"`` (everything stays in
    ``<run_dir>/wandb/``; upload later with ``wandb sync``) or ``"disabled"``. ``project``: default
    ``$WANDB_PROJECT`` or ``"plugtrain"``; ``entity``: default your W&B default entity; ``run_name``: default ``run.name``
    of the spec; ``group``, ``tags``, ``notes``: as in ``wandb.init``.

    The W&B files live under the run directory (``dir = run_dir``) and the run id is kept in
    ``<run_dir>/wandb.json``: ``plugtrain train --resume auto`` and elastic restarts continue the same W&B run
    (``resume="allow"``), and a step the run already has is not logged again. A run that cannot start (not logged in,
    server unreachable within ``$WANDB_INIT_TIMEOUT``) stops before training, with one message.
    """

    def __init__(self, run_dir: Path, spec: dict[str, Any] | None = None, rank: int = 0,
                 mode: Literal["online", "offline", "disabled"] = "online", project: str | None = None,
                 entity: str | None = None, run_name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, notes: str | None = None) -> None:
        from plugtrain.core.errors import PlugtrainError

        self.run_dir = Path(run_dir)
        self.run: Any = None
        self._completed = False
        self._floor = -1  # the last step a resumed run already has ...
        self._floor_keys: set[str] = set()  # ... and the keys it has at that step
        self._min_step = 0  # an online resumed run: W&B's own next step
        if rank != 0:  # the runtime builds loggers on rank 0 only; anywhere else this logger does nothing
            return
        if mode not in ("online", "offline", "disabled"):
            raise PlugtrainError(f"[loggers] wandb: mode must be 'online', 'offline' or 'disabled', got {mode!r}")
        spec = spec or {}
        run = spec.get("run", {}) if isinstance(spec.get("run"), dict) else {}
        os.environ.setdefault("WANDB_SILENT", "true")  # no login banners, no sync hints: plugtrain prints the run
        try:
            import wandb
        except ImportError as exc:  # pragma: no cover - wandb is a dependency of this package
            raise PlugtrainError(f"[loggers] wandb: the wandb package cannot be imported ({exc}); "
                                 "pip install wandb") from None
        self._wandb = wandb
        state = _read_json(self.run_dir / STATE_FILE) or {}
        resuming = bool(state.get("run_id")) and mode != "disabled"  # the same W&B run, also after a change of mode
        if resuming:
            run_id = str(state["run_id"])
            # what the earlier attempts of this run wrote for good: their transaction logs under <run_dir>/wandb
            self._floor, self._floor_keys = logged_floor(self.run_dir / "wandb", run_id)
        else:
            from wandb.sdk.lib.runid import generate_id

            run_id = generate_id()
        try:
            self.run = wandb.init(
                dir=str(self.run_dir), id=run_id, resume="allow" if resuming else None, mode=mode,
                project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, entity=entity,
                name=run_name or run.get("name") or self.run_dir.name, group=group, tags=tags, notes=notes,
                config=spec, allow_val_change=True, job_type="train", reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except BaseException as exc:
            _teardown(wandb)
            if not isinstance(exc, Exception):
                raise
            raise PlugtrainError(f"[loggers] wandb: could not start a W&B run (mode {mode!r}): "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc
        if mode == "disabled":
            return
        if resuming and mode == "online":  # the server's history: W&B refuses steps below run.step anyway
            self._min_step = int(getattr(self.run, "step", 0) or 0)
        # a logger the runtime never closes (another logger's factory failed after this one was built) still
        # finishes its W&B run, at exit
        self.arm()
        _write_json(self.run_dir / STATE_FILE, {"run_id": run_id, "mode": mode, "project": self.run.project,
                                                "entity": self.run.entity or None})

    # -- the logger contract -------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        data = {}
        for key, value in metrics.items():
            x = _number(value)
            if x is not None:
                data[key] = x
        self._log(data, step)

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Every ``trainer.log_every_steps`` optimizer steps: ``step/loss``, ``step/lr``, ``step/grad_norm``,
        ``step/throughput`` at the global step (a resumed run skips the steps it already has, as for epochs)."""
        self.log_metrics(metrics, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        if self.run is None:
            return
        import numpy as np

        self._log({tag: self._wandb.Image(np.asarray(image))}, step)

    def log_embedding(self, tag: str, embeddings: Any, labels: list[Any], step: int) -> None:
        """A table of (label, embedding) rows; W&B's 2D projection panel plots it."""
        if self.run is None:
            return

        vectors = embedding_matrix(embeddings)
        rows = [[_plain(label), vec.tolist()] for label, vec in zip(labels, vectors, strict=False)]
        self._log({tag: self._wandb.Table(columns=["label", "embedding"], data=rows)}, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """At the end of training: the final metrics (SWA's too) into the run summary."""
        if self.run is None:
            return
        final = {k: x for k, v in metrics.items() if (x := _number(v)) is not None}
        if final:
            try:
                self.run.summary.update(final)
            except Exception as exc:  # noqa: BLE001 - never stop training for a summary
                _warn(f"could not update the run summary: {type(exc).__name__}: {_first_line(exc)}")
        self._completed = True

    def finish(self, exc: BaseException | None) -> None:
        """End the W&B run: preempted when a signal stopped training, failed on an error, else finished."""
        if self.run is None:
            return
        from plugtrain.core.errors import Stopped

        interrupted = isinstance(exc, (KeyboardInterrupt, Stopped))
        try:
            if interrupted:
                self.run.mark_preempting()  # W&B shows it as preempted until --resume auto continues it
            self.run.finish(exit_code=0 if self._completed and exc is None else 1)
        except Exception as exc2:  # noqa: BLE001
            _warn(f"could not finish the W&B run: {type(exc2).__name__}: {_first_line(exc2)}")
        finally:
            _teardown(self._wandb)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _log(self, data: dict[str, Any], step: int) -> None:
        """``run.log(data, step=step)`` minus what a resumed run already has at that step."""
        if self.run is None or not data:
            return
        step = int(step)
        if step < self._floor or step < self._min_step:
            return
        if step == self._floor:
            data = {k: v for k, v in data.items() if k not in self._floor_keys}
            if not data:
                return
        try:
            self.run.log(data, step=step)
        except Exception as exc:  # noqa: BLE001 - training goes on; never silent
            _warn(f"could not log {', '.join(data)} at step {step}: {type(exc).__name__}: {_first_line(exc)}")


# -- what earlier attempts of a run wrote: W&B's transaction logs --------------------------------------------------------

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records, after a 7-byte file header
_HEADER = struct.Struct("<IHB")  # record header: crc32 (of type byte + data), length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def transaction_log_records(path: Path) -> list[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a run's ``.wandb`` file, in order; a torn tail (a process killed
    while writing) ends the list instead of raising."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if len(data) < 7 or data[:4] != b":W&B":
        return []
    records, pos, parts = [], 7, b""
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:  # a block's zero trailer
            pos += left
            continue
        crc, length, kind = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size:pos + _HEADER.size + length]
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or len(body) != length or \
                zlib.crc32(body, zlib.crc32(bytes((kind,)))) & 0xFFFFFFFF != crc:
            break
        pos += _HEADER.size + length
        if kind == _FULL:
            parts = body
        elif kind == _FIRST:
            parts = body
            continue
        else:
            parts += body
            if kind == _MIDDLE:
                continue
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(parts)
        except Exception:  # noqa: BLE001 - not a record: stop here
            break
        records.append(record)
    return records


def logged_floor(wandb_dir: Path, run_id: str) -> tuple[int, set[str]]:
    """The last history step the earlier attempts of run ``run_id`` wrote to their transaction logs under
    ``wandb_dir``, and the keys of that step; ``(-1, set())`` when there is none."""
    floor, keys = -1, set()
    for path in sorted(wandb_dir.glob(f"*-{run_id}/run-{run_id}.wandb")):
        try:
            records = transaction_log_records(path)
        except OSError:
            continue
        for record in records:
            if record.WhichOneof("record_type") != "history":
                continue
            step = record.history.step.num
            names = {item.key or (item.nested_key[0] if item.nested_key else "") for item in record.history.item}
            names = {n for n in names if n and not n.startswith("_")}
            if step > floor:
                floor, keys = step, names
            elif step == floor:
                keys |= names
    return floor, keys


def _teardown(wandb: Any) -> None:
    """Stop wandb's service process when no other W&B run of this process is active."""
    try:
        from wandb.sdk import wandb_setup

        if wandb_setup.singleton().most_recent_active_run() is not None:
            return
    except Exception:  # noqa: BLE001 - an older wandb: tear down
        pass
    try:
        wandb.teardown()
    except Exception:  # noqa: BLE001
        pass


def _plain(x: Any) -> Any:
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    return x if isinstance(x, (int, float, str, bool)) else str(x)


@hookimpl
def plugtrain_loggers():
    return [Component("wandb", WandbLogger,
                      summary="Weights & Biases: spec as config, metrics per step, images; online/offline; resumable")]
