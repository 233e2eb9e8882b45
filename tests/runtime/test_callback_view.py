"""Callbacks get a documented view of the run (RunView), not the trainer: one written against the view alone trains;
one that reaches for anything else is refused with one message, exit 2 (issue 22)."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_spec
from helpers_plugins import make_dist, run_plugtrain

from plugtrain.core.runtime import session
from plugtrain.core.runtime.view import NotInRunView, RunView, members

#: What CONTRIBUTING.md documents, exactly: a name added to or dropped from the view must be documented.
DOCUMENTED = ["best", "epoch", "epochs", "global_step", "history", "is_main", "lrs", "message", "metrics", "mode",
              "model", "primary_metric", "rank", "request_stop", "requires_grad_changed", "run_dir", "spec",
              "train_samples", "val_samples", "world_size"]


class ViewOnly:
    """Uses every part of the documented view, and nothing else."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_train_start(self, run):
        assert isinstance(run, RunView)
        self.seen.append(("start", run.epoch, run.epochs, run.global_step, run.is_main, run.rank, run.world_size,
                          run.train_samples > 0, run.val_samples > 0, run.run_dir is not None, run.spec.run.name))

    def on_epoch_start(self, run, epoch):
        assert any(p.requires_grad for p in run.model.parameters())
        run.requires_grad_changed()  # nothing changed: harmless
        self.seen.append(("epoch_start", epoch))

    def on_epoch_end(self, run, epoch, metrics):
        assert len(run.lrs) >= 1 and all(math.isfinite(lr) for lr in run.lrs)
        assert run.primary_metric in metrics and run.mode in ("min", "max")
        assert len(run.history) == epoch - 1  # this epoch is added after the hook
        run.message(f"view-only saw epoch {epoch} at step {run.global_step}")
        self.seen.append(("epoch_end", epoch, run.global_step))
        if epoch == 2:
            run.request_stop("the view-only callback asked")

    def on_train_end(self, run, metrics):
        self.seen.append(("end", run.epoch, len(run.history), run.best is not None, run.metrics == run.history[-1]))


def test_a_callback_written_against_the_view_alone_trains_and_stops_the_run(tmp_path, capfd):
    cb = ViewOnly()
    result = session.run(str(tiny_spec(tmp_path, epochs=4, steps=1)), callbacks=[cb])
    assert len(result.history) == 2  # request_stop at epoch 2 of 4
    assert cb.seen == [("start", 0, 4, 0, True, 0, 1, True, True, True, "tiny"),
                       ("epoch_start", 1), ("epoch_end", 1, 1), ("epoch_start", 2), ("epoch_end", 2, 2),
                       ("end", 2, 2, True, True)]
    out = capfd.readouterr()
    assert "view-only saw epoch 2 at step 2" in out.out + out.err


def test_the_view_is_read_only_and_refuses_every_other_name_naming_the_callback(tmp_path):
    class Reacher:
        def on_train_start(self, run):
            run.optimizers_internal  # noqa: B018 - the reach is the test

    with pytest.raises(NotInRunView) as info:
        session.run(str(tiny_spec(tmp_path, epochs=1, steps=1)), callbacks=[Reacher()])
    msg = str(info.value)
    assert msg.startswith("callback Reacher: callbacks get a RunView, not the trainer; 'optimizers_internal' is not "
                          "part of it.")
    assert "CONTRIBUTING.md, 'Callbacks: the run view'" in msg and info.value.exit_code == 2

    class Setter:
        def on_train_start(self, run):
            run.epoch = 5

    with pytest.raises(NotInRunView, match="'epoch' cannot be set: the view is read-only"):
        session.run(str(tiny_spec(tmp_path, name="setter", epochs=1, steps=1)), callbacks=[Setter()])

    class Typo:
        def on_train_start(self, run):
            return getattr(run, "optimizer", None), run.globl_step

    with pytest.raises(NotInRunView, match="'globl_step' is not part of it. Did you mean 'global_step'"):
        session.run(str(tiny_spec(tmp_path, name="typo", epochs=1, steps=1)), callbacks=[Typo()])


def test_the_view_has_exactly_the_documented_names():
    from helpers_plugins import REPO

    assert members() == DOCUMENTED
    section = (REPO / "CONTRIBUTING.md").read_text().split("### Callbacks: the run view", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{name}" in section for name in DOCUMENTED), [n for n in DOCUMENTED if f"`{n}" not in section]


PLUGIN = '''
from plugtrain import Component, hookimpl


class Touchy:
    def on_epoch_end(self, run, epoch, metrics):
        run.optimizers_internal.clear()


@hookimpl
def plugtrain_callbacks():
    return [Component("touchy", Touchy)]
'''


@pytest.mark.slow  # a fresh interpreter for the real command line with a real plugin
def test_a_plugin_callback_reaching_past_the_view_is_one_message_exit_2(tmp_path):
    plugin = make_dist(tmp_path / "plugin", "touchy-plugin", {"touchy": "touchy_plugin"}, {"touchy_plugin": PLUGIN})
    spec = tiny_spec(tmp_path, epochs=1, steps=1, extra='\n[[callbacks]]\nname = "touchy"\n')
    proc = run_plugtrain("train", str(spec), paths=[plugin])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ("callback Touchy: callbacks get a RunView, not the trainer; 'optimizers_internal' is not part of it."
            in proc.stderr)
