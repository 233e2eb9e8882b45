"""A callback whose hooks name anything outside its RunView is refused at the start of the run, before the first
step, naming the callback, the hook and the name (issue 22); a name computed at run time is refused when reached."""

from __future__ import annotations

import pytest
from conftest import tiny_spec

from plugtrain.core.runtime import session
from plugtrain.core.runtime.view import NotInRunView, reaches_outside


class Late:
    """Reaches past the view only at the end of the first epoch: refused before it trains."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self, run):
        self.calls.append("start")

    def on_epoch_end(self, run, epoch, metrics):
        run.optimizers_internal.clear()


def test_a_reach_in_a_later_hook_is_refused_before_the_first_step(tmp_path):
    cb = Late()
    with pytest.raises(NotInRunView) as info:
        session.run(str(tiny_spec(tmp_path, epochs=1, steps=1)), callbacks=[cb])
    msg = str(info.value)
    assert msg.startswith("callback Late: callbacks get a RunView, not the trainer; 'optimizers_internal' is not "
                          "part of it.") and msg.endswith("(in on_epoch_end; refused before training)")
    assert info.value.exit_code == 2
    assert cb.calls == []  # no hook ran, no step was taken
    assert not list(tmp_path.rglob("last.pt"))


def test_what_the_source_says_is_decided_and_what_it_computes_is_left_to_the_view():
    class Reads:
        def on_epoch_start(self, view, epoch):
            return view.global_step, view.trainer

    class Sets:
        def on_train_end(self, run, metrics):
            run.epoch = 3

    class Computes:
        def on_train_start(self, run):
            return getattr(run, "optimizer", None), run.__class__

    class Fine:
        def on_epoch_end(self, run, epoch, metrics):
            run.message(str(run.metrics)) if run.is_main else run.request_stop("x")

    assert reaches_outside(Reads()) == ("on_epoch_start", "trainer", "is not part of it")
    assert reaches_outside(Sets()) == ("on_train_end", "epoch", "cannot be set: the view is read-only")
    assert reaches_outside(Computes()) is None and reaches_outside(Fine()) is None
    assert reaches_outside(object()) is None
