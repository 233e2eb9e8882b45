"""The run's checkpoints: ``last.pt`` (every save), ``best.pt`` (by the primary metric), ``epoch-NNNN.pt`` (every
``checkpoint_every_epochs``, the best ``keep_top_k`` kept), FSDP shards beside them.

A :class:`Checkpointer` is given the run's stateful parts by checkpoint key (``model``, ``loss``, ``optimizers``,
``scheduler``, ``ema``, ...: anything with ``state_dict()`` / ``load_state_dict()``), as torchtitan's
``CheckpointManager(states=...)`` is. It writes them with the files' format and atomicity (:mod:`.checkpoint`) and
restores them with one readable error when a checkpoint does not fit the spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.runtime import fsdp
from plugtrain.core.runtime.compare import is_better

#: Parts a checkpoint must have; the others are restored when both the checkpoint and the run have them.
REQUIRED = ("model", "loss")
#: Parts an fsdp run's ``last.pt`` keeps in its DCP directory instead.
SHARDED = ("model", "loss", "optimizers")


class Mismatch(Exception):
    """A part's state does not fit (the message says how)."""


class Stateful(list):
    """Several stateful objects as one part: a list of their states (``optimizers``)."""

    def state_dict(self) -> list[Any]:
        return [o.state_dict() for o in self]

    def load_state_dict(self, states: list[Any]) -> None:
        if len(states) != len(self):
            raise Mismatch(f"the checkpoint has {len(states)} optimizer(s), this spec {len(self)}")
        for obj, sd in zip(self, states, strict=True):
            obj.load_state_dict(sd)


class Callbacks:
    """The callbacks that have a state, keyed by their position in the spec."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)
                if callable(getattr(cb, "state_dict", None))}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for key, sd in states.items():
            cb = self.callbacks[int(key)] if int(key) < len(self.callbacks) else None
            if cb is not None and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(sd)


class Checkpointer:
    """Saves and restores ``states``; chooses ``best.pt`` and the kept ``epoch-NNNN.pt`` files.

    ``sharded`` (FSDP): the model, loss and optimizer states are saved collectively as shards.
    ``rank_state()`` is each rank's own part (RNG, epoch sums), gathered to rank 0 at every save."""

    def __init__(self, run_dir: Path | None, dist: Any, states: dict[str, Any], *, mode: str, best_key: str,
                 every_epochs: int = 0, keep_top_k: int = 0, sharded: bool = False,
                 rank_state: Callable[[], dict[str, Any]] = dict, meta: dict[str, Any] | None = None) -> None:
        self.run_dir, self.dist, self.states = run_dir, dist, states
        self.mode, self.best_key, self.every_epochs, self.keep_top_k = mode, best_key, every_epochs, keep_top_k
        self.sharded, self.rank_state, self.meta = sharded, rank_state, meta or {}
        self.best: dict[str, Any] | None = None
        self.epoch_checkpoints: list[list[Any]] = []  # [file name, primary metric value]
        self.stale_shards = False  # resumed unsharded from an fsdp run's shards: delete them at the first save

    @property
    def directory(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- saving ----------------------------------------------------------------------------------------------------
    def save(self, top: dict[str, Any]) -> Path | None:
        """Write ``last.pt`` (rank 0; collective): ``top`` (the trainer's progress), every part, every rank's
        ``rank_state``. Raises :class:`NonFinite` rather than save a model with non-finite parameters; returns the
        path on rank 0."""
        if self.run_dir is None:
            return None
        per_rank = self.dist.gather_objects(self.rank_state())
        sharded = None
        if self.sharded:  # collective
            if not fsdp.all_finite(self.states["model"], self.dist):
                raise NonFinite("the model's parameters became non-finite")
            sharded = fsdp.save_sharded(self.states["model"], self.states["loss"], self.states["optimizers"],
                                        self.dist, self.directory, int(top["global_step"]))
        if not self.dist.is_main:
            return None
        if sharded is None:
            finite = torch.stack([torch.isfinite(p).all() for p in self.states["model"].parameters()]).all()
            if not bool(finite):
                raise NonFinite("the model's parameters became non-finite")
        state = self.state_dict(top, [r["rng"] for r in per_rank], [r["epoch_state"] for r in per_rank])
        if sharded:
            state.update(sharded)  # the full model and loss; the model and optimizer shards are in sharded["dir"]
        ckpt.check_plain(state)
        path = self.directory / "last.pt"
        ckpt.save_atomic(state, path)
        if sharded or self.stale_shards:
            fsdp.prune(self.directory, sharded["sharded"]["dir"] if sharded else "")
            self.stale_shards = False
        return path

    def state_dict(self, top: dict[str, Any], rngs: list[Any], epoch_states: list[Any]) -> dict[str, Any]:
        from plugtrain import __version__

        state: dict[str, Any] = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "plugtrain": __version__,
                                 **top}
        for key, part in self.states.items():
            if self.sharded and key in SHARDED:  # from fsdp.save_sharded and its DCP directory
                state[key] = [] if key == "optimizers" else {}
            else:
                state[key] = part.state_dict() if part is not None else None
        state.update(rng=rngs, epoch_state=epoch_states[0], epoch_states=epoch_states, best=self.best,
                     epoch_checkpoints=self.epoch_checkpoints, meta={**self.meta, "best_metric": self.best_key})
        return state

    def save_epoch(self, top: dict[str, Any], metrics: dict[str, float], epoch: int) -> None:
        """At the end of epoch ``epoch``: ``last.pt``, and ``best.pt`` / ``epoch-NNNN.pt`` as hard links to it."""
        value = metrics.get(self.best_key)
        is_best = value is not None and is_better(value, (self.best or {}).get("value"), self.mode)
        if is_best:
            self.best = {"metric": self.best_key, "value": float(value), "epoch": epoch,
                         "global_step": top["global_step"]}
        epoch_file = None
        pruned: list[str] = []
        if self.every_epochs and epoch % self.every_epochs == 0:
            epoch_file = f"epoch-{epoch:04d}.pt"
            self.epoch_checkpoints.append([epoch_file, float(value) if value is not None else None])
            if self.keep_top_k:
                pruned = self._worst(self.keep_top_k)
                self.epoch_checkpoints = [e for e in self.epoch_checkpoints if e[0] not in pruned]
        last = self.save(top)
        if self.dist.is_main and last is not None:
            if is_best:
                ckpt.copy_atomic(last, self.directory / "best.pt")
            if epoch_file is not None and epoch_file not in pruned:
                ckpt.copy_atomic(last, self.directory / epoch_file)
            for name in pruned:
                (self.directory / name).unlink(missing_ok=True)

    def _worst(self, keep: int) -> list[str]:
        """The epoch files beyond the ``keep`` best (a missing or non-finite value ranks last)."""
        worst = -math.inf if self.mode == "max" else math.inf

        def rank(entry: list[Any]) -> float:
            v = entry[1] if entry[1] is not None and math.isfinite(entry[1]) else worst
            return -v if self.mode == "max" else v

        return [name for name, _ in sorted(self.epoch_checkpoints, key=rank)[keep:]]

    # -- restoring -------------------------------------------------------------------------------------------------
    def load(self, state: dict[str, Any], source: Path) -> None:
        """Restore every part from ``state`` (loaded from ``source``), and the best / epoch-file bookkeeping."""
        def fail(what: str, exc: BaseException | None = None) -> PlugtrainError:
            detail = f": {first_line(exc)}" if exc is not None and first_line(exc) else ""
            return PlugtrainError(f"--resume {source}: {what}{detail} (was the spec changed since the checkpoint?)")

        replay = self._schedule_to_replay(state, fail)
        from_shards = self.sharded or bool(state.get("sharded"))
        if from_shards:  # an fsdp run's model, loss and optimizer states are in the checkpoint's DCP directory
            fsdp.load_sharded(self.states["model"], self.states["loss"], self.states["optimizers"], state, source)
            self.stale_shards = not self.sharded
        for key, part in self.states.items():
            if from_shards and key in SHARDED:
                continue
            required = key in REQUIRED
            saved = state.get(key)
            if part is None or (not required and (saved is None or saved == {})):  # {}: a disabled scaler's
                continue
            if key == "scheduler" and replay is not None:  # rebuilt for the new length below
                continue
            try:
                part.load_state_dict(state[key])
            except Mismatch as exc:
                raise fail(str(exc)) from None
            except (RuntimeError, KeyError, ValueError, IndexError) as exc:
                what = "the checkpoint's model does not fit this spec's model" if required else \
                    "cannot restore the training state"
                raise fail(what, exc) from None
        self.best = state.get("best")
        self.epoch_checkpoints = [list(e) for e in state.get("epoch_checkpoints") or []]
        if replay is not None:
            _replay(self.states["scheduler"], *replay)

    def _schedule_to_replay(self, state: dict[str, Any], fail: Callable[..., PlugtrainError]) -> Any:
        """When the run's length changed since the checkpoint (``run.epochs``, allowed on resume), a scheduler that
        steps without a metric is not restored from the checkpoint (its state holds the old length, e.g. a cosine's
        ``T_max``) but replayed from the start of the new schedule to the checkpoint's step count: ``(the lrs it
        starts from, steps)``. A metric-fed scheduler (ReduceLROnPlateau) does not depend on the length: restored."""
        import inspect

        sched, saved = self.states.get("scheduler"), state.get("scheduler")
        old = ((state.get("meta") or {}).get("spec") or {}).get("run") or {}
        new = (self.meta.get("spec") or {}).get("run") or {}
        if sched is None or not saved or old.get("epochs") in (None, new.get("epochs")):
            return None
        if "metrics" in inspect.signature(sched.step).parameters:
            return None
        steps, optimizer = saved.get("last_epoch"), getattr(sched, "optimizer", None)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0 or optimizer is None:
            raise fail(f"run.epochs changed ({old.get('epochs')} -> {new.get('epochs')}) but the scheduler "
                       f"{type(sched).__name__} cannot be rebuilt for the new length (its state has no step count)")
        return [float(g["lr"]) for g in optimizer.param_groups], steps


def _replay(sched: Any, start_lrs: list[float], steps: int) -> None:
    """Step a freshly built scheduler ``steps`` times from its starting lrs: its state and the optimizer's lrs are
    then those of the new schedule at the checkpoint's position (the optimizer state restored meanwhile holds the
    old schedule's lrs)."""
    import warnings

    for group, lr in zip(sched.optimizer.param_groups, start_lrs, strict=False):
        group["lr"] = lr
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no optimizer step is due here
        warnings.simplefilter("ignore")
        for _ in range(steps):
            sched.step()


def resume_position(state: dict[str, Any], global_batch: int, batches_per_epoch: int) -> tuple[int, int, str]:
    """``(epoch, batch in epoch, note)`` to continue a checkpoint at. When the global batch (batch size x processes)
    changed, the epoch resumes at the batch that covers as many samples (not exactly where it stopped: noted)."""
    epoch, batch, note = int(state["epoch"]), int(state["batch_in_epoch"]), ""
    old = state.get("sampler") or {}
    old_global = int(old.get("batch_size", 0)) * int(old.get("world_size", 0))
    if batch and old_global and old_global != global_batch:
        batch = (batch * old_global) // global_batch
        note = (f"note: the global batch changed ({old_global} -> {global_batch}); the epoch resumes at batch "
                f"{batch}, not exactly where it stopped")
    if batch >= batches_per_epoch:
        epoch, batch = epoch + 1, 0
    return epoch, batch, note


def rank_rng(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's RNG states in a checkpoint written by as many processes (else None: seeded afresh)."""
    rngs = state.get("rng") or []
    if rngs and int((state.get("meta") or {}).get("world_size", 1)) == world_size and rank < len(rngs):
        return rngs[rank]
    return None


class NonFinite(Exception):
    """The model's parameters are not finite: nothing was saved."""
