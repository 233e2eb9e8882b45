"""What a callback sees of the run: :class:`RunView`, a small read-only view in place of the trainer.

Every callback hook gets a :class:`RunView` as its first argument. It is the whole of what a callback may read and do
(documented in CONTRIBUTING.md, "Callbacks: the run view"), so the trainer's insides can change without breaking
plugins. A name outside it is refused with :class:`NotInRunView`: one message naming the callback, exit code 2.
:class:`CallbackHooks` refuses it before training where the code says so: a hook that reads, sets or deletes
``run.NAME`` outside the view (found in its source by :func:`reaches_outside`) stops the run before its first step;
a name the code computes (``getattr(run, name)``) is refused when it is reached.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from plugtrain.core.errors import PlugtrainError, did_you_mean

#: Where the view is documented, for the refusal's message.
DOCUMENTED = "see CONTRIBUTING.md, 'Callbacks: the run view'"


class NotInRunView(PlugtrainError, AttributeError):
    """A callback read or set a name that is not part of :class:`RunView` (an ``AttributeError`` too, so that
    ``getattr(run, name, default)`` and ``hasattr`` still work)."""


def _reads(*names: str) -> property:
    """A read-only view property: ``trainer.<names[0]>.<names[1]>...`` (the trainer's value, not a copy)."""

    def get(self: RunView) -> Any:
        value = self._trainer
        for name in names:
            value = getattr(value, name)
        return value

    return property(get, doc=f"the run's {'.'.join(names)}")


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
    epoch = _reads("epoch")
    epochs = _reads("epochs")
    global_step = _reads("global_step")
    primary_metric = _reads("primary_metric")
    mode = _reads("mode")

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
    spec = _reads("spec")
    run_dir = _reads("run_dir")
    model = _reads("model")
    rank = _reads("dist", "rank")
    world_size = _reads("dist", "world_size")
    is_main = _reads("dist", "is_main")

    @property
    def train_samples(self) -> int:
        return len(self._trainer.built.train_data)

    @property
    def val_samples(self) -> int:
        return len(self._trainer.built.val_data)

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


#: The hooks a callback may define (:class:`plugtrain.core.hookspecs.Callback`).
HOOKS = ("on_train_start", "on_epoch_start", "on_epoch_end", "on_train_end")


def reaches_outside(callback: Any) -> tuple[str, str, str] | None:
    """The first ``(hook, name, why)`` where one of ``callback``'s hooks names ``run.NAME`` outside the view (a read
    or a delete of a name it lacks, a set of any name), read from the hook's source; None when none does or the
    source cannot be read (a builtin, a lambda made at run time): then the view refuses at the access."""
    for hook in HOOKS:
        fn = getattr(type(callback), hook, None)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError, IndentationError):
            continue
        func = tree.body[0] if tree.body and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        if func is None or len(func.args.args) < 2:
            continue
        run = func.args.args[1].arg  # the view: the first parameter after self
        for node in ast.walk(func):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == run):
                continue
            if isinstance(node.ctx, ast.Store):
                return hook, node.attr, "cannot be set: the view is read-only" if node.attr in members() else \
                    "is not part of it"
            if node.attr not in members() and not (node.attr.startswith("__") and node.attr.endswith("__")):
                return hook, node.attr, "is not part of it"
    return None


class CallbackHooks:
    """Calls the callbacks' hooks, each with its own :class:`RunView` of ``trainer`` first. :meth:`check` (at the
    start of the run) refuses a callback whose hooks name anything outside the view, before any step."""

    def __init__(self, trainer: Any, callbacks: list[Any]) -> None:
        self.trainer, self.callbacks = trainer, callbacks
        self._views: dict[int, RunView] = {}  # each callback's view of the run, by id()

    def view(self, callback: Any) -> RunView:
        view = self._views.get(id(callback))
        if view is None:
            view = self._views[id(callback)] = RunView(self.trainer, type(callback).__name__)
        return view

    def check(self) -> None:
        """Raise :class:`NotInRunView` for the first callback whose hook source reaches outside the view."""
        for cb in self.callbacks:
            found = reaches_outside(cb)
            if found is not None:
                hook, name, why = found
                err = self.view(cb)._refuse(name, why)
                raise NotInRunView(f"{err} (in {hook}; refused before training)", name=name, obj=err.obj)

    def call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if callable(fn):
                fn(self.view(cb), *args)
