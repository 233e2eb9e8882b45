"""What a callback sees of the run: :class:`RunView`, a small read-only view in place of the trainer.

Every callback hook gets a :class:`RunView` as its first argument. It is the whole of what a callback may read and do
(documented in CONTRIBUTING.md, "Callbacks: the run view"), so the trainer's insides can change without breaking
plugins. A name outside it is refused with :class:`NotInRunView`: one message naming the callback, exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError, did_you_mean

#: Where the view is documented, for the refusal's message.
DOCUMENTED = "see CONTRIBUTING.md, 'Callbacks: the run view'"


class NotInRunView(PlugtrainError, AttributeError):
    """A callback read or set a name that is not part of :class:`RunView` (an ``AttributeError`` too, so that
    ``getattr(run, name, default)`` and ``hasattr`` still work)."""


class RunView:
    """The run as a callback sees it: progress, metrics, the model, the process, and two actions.

    Read-only: ``epoch`` (epochs completed), ``epochs`` (the run's length), ``global_step`` (optimizer steps),
    ``primary_metric``, ``mode`` (``"min"`` / ``"max"``), ``metrics`` (the latest epoch's, a copy), ``history``
    (every completed epoch's metrics, copies), ``best`` (``best.pt``'s metric, value, epoch, step; or ``None``),
    ``lrs`` (the main optimizer's learning rate per parameter group), ``spec`` (the resolved run spec), ``run_dir``
    (``None`` without one), ``rank``, ``world_size``, ``is_main``, ``train_samples``, ``val_samples`` and ``model``
    (the backbone being trained, unwrapped from DDP / ``torch.compile``: a callback may change its parameters'
    ``requires_grad``). Actions: :meth:`request_stop`, :meth:`requires_grad_changed`, :meth:`message`.
    """

    __slots__ = ("_trainer", "_owner")

    def __init__(self, trainer: Any, owner: str) -> None:
        object.__setattr__(self, "_trainer", trainer)
        object.__setattr__(self, "_owner", owner)

    # -- progress and metrics ----------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._trainer.epoch

    @property
    def epochs(self) -> int:
        return self._trainer.epochs

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def primary_metric(self) -> str:
        return self._trainer.primary_metric

    @property
    def mode(self) -> str:
        return self._trainer.mode

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self._trainer.metrics)

    @property
    def history(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trainer.history]

    @property
    def best(self) -> dict[str, Any] | None:
        best = self._trainer.best
        return dict(best) if best is not None else None

    @property
    def lrs(self) -> list[float]:
        opt = self._trainer.optimizer
        return [float(g["lr"]) for g in opt.param_groups] if opt is not None else []

    # -- the run -----------------------------------------------------------------------------------------------------
    @property
    def spec(self) -> Any:
        return self._trainer.spec

    @property
    def run_dir(self) -> Path | None:
        return self._trainer.run_dir

    @property
    def rank(self) -> int:
        return self._trainer.dist.rank

    @property
    def world_size(self) -> int:
        return self._trainer.dist.world_size

    @property
    def is_main(self) -> bool:
        return self._trainer.dist.is_main

    @property
    def train_samples(self) -> int:
        return len(self._trainer.built.train_data)

    @property
    def val_samples(self) -> int:
        return len(self._trainer.built.val_data)

    @property
    def model(self) -> Any:
        return self._trainer.model

    # -- actions -----------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Stop after the current epoch (its checkpoints are still written); ``reason`` is printed."""
        self._trainer.request_stop(reason)

    def requires_grad_changed(self) -> None:
        """Call after changing parameters' ``requires_grad`` (a DDP wrapper is rebuilt, new parameters get a group)."""
        self._trainer.requires_grad_changed()

    def message(self, text: str) -> None:
        """Print one line to the run's output (rank 0)."""
        self._trainer.report.message(str(text))

    # -- everything else is refused ----------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        raise self._refuse(name, "is not part of it")

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._refuse(name, "cannot be set: the view is read-only" if name in members() else "is not part of it")

    def __delattr__(self, name: str) -> None:
        raise self._refuse(name, "cannot be deleted: the view is read-only")

    def _refuse(self, name: str, why: str) -> NotInRunView:
        hint = did_you_mean(name, members()) if name not in members() else ""
        return NotInRunView(f"callback {self._owner}: callbacks get a RunView, not the trainer; {name!r} {why}."
                            f"{hint} It has: {', '.join(members())} ({DOCUMENTED})", name=name, obj=self)

    def __repr__(self) -> str:
        return f"RunView(epoch={self.epoch}, global_step={self.global_step})"

    def __dir__(self) -> list[str]:
        return members()


def members() -> list[str]:
    """The public names of :class:`RunView`."""
    return sorted(n for n in vars(RunView) if not n.startswith("_"))
