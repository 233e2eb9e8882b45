"""One engine behind every entry point (issue 22): the CLI, ``plugtrain.train``, a sweep trial and a cross-validation
fold all train through :func:`plugtrain.core.runtime.session.run` and get its :class:`RunResult`; what stops a run
is a typed exception (a data fault with its split and file, a numerical fault with its step, a stop by signal), and
no command reads an error's text, a traceback's frames or a private attribute to learn what happened."""

from __future__ import annotations

import ast
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from conftest import cli, tiny_spec
from PIL import Image

import plugtrain
from plugtrain.core.errors import DataFault, NumericalFault, PlugtrainError, Stopped, TrainingFailed
from plugtrain.core.runtime import session
from plugtrain.core.runtime.session import RunResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PACKAGE = Path(plugtrain.__file__).resolve().parent
#: What depends on the clock, not on the training.
TIMED = ("train/throughput", "train/epoch_time", "train/step_time", "train/data_time", "train/compute_time")


def _trained(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in TIMED and not k.startswith(("time/", "perf/"))}


@pytest.fixture
def engine_calls(monkeypatch):
    """Every call of the engine, with what it returned: the real engine, recorded on the way out."""
    calls: list[tuple[list[str], RunResult]] = []
    real = session.run

    def recorded(path, overrides=(), **kwargs):
        result = real(path, overrides, **kwargs)
        calls.append((list(overrides), result))
        return result

    monkeypatch.setattr(session, "run", recorded)
    return calls


@pytest.mark.slow
def test_the_cli_the_api_a_sweep_trial_and_a_cv_fold_get_the_same_result_from_the_one_engine(tmp_path, engine_calls):
    from plugtrain.sweep import cv, runner

    spec = tiny_spec(tmp_path, epochs=2, steps=2)
    assert cli("train", spec, "--set", 'run.name="cli"') == 0
    api = plugtrain.train(spec, set={"run.name": "api"})
    trial = runner.train(str(spec), ['run.name="trial"'])
    folds = cv.cross_validate(str(spec), ['run.name="cv"'], 2)

    assert len(engine_calls) == 5  # the CLI, the API, the trial and the two folds: one engine call each
    results = [r for _, r in engine_calls]
    assert all(type(r) is RunResult for r in (*results, api, trial, *folds.runs))
    assert plugtrain.Result is RunResult
    assert api is results[1]  # the API returns the engine's result itself
    assert trial == results[2] and folds.runs[0].fold == (1, 2) and folds.runs[1].fold == (2, 2)
    cli_result = results[0]
    for r, name in ((cli_result, "cli"), (api, "api"), (trial, "trial"), (folds.runs[0], "cv/fold-1")):
        assert r.run_dir == tmp_path / "runs" / name and r.exit_code == 0 and r.exit_reason == "completed"
        assert r.epochs == 2 and len(r.history) == 2 and r.metrics == r.history[-1]
        assert r.best is not None and r.best["metric"] == "val/accuracy"
    # the same spec trained three ways is the same training
    assert [_trained(h) for h in cli_result.history] == [_trained(h) for h in api.history] \
        == [_trained(h) for h in trial.history]
    assert cli_result.best == api.best == trial.best
    assert (folds.runs[0].run_dir / "fold.json").is_file()
    epoch, row = trial.best_row("val/accuracy", "max")
    assert epoch == trial.best["epoch"] and row["val/accuracy"] == trial.best["value"]


def test_a_signal_stops_the_run_with_stopped_naming_its_checkpoint_and_step(tmp_path):
    class Terminate:
        def on_epoch_end(self, trainer, epoch, metrics):
            os.kill(os.getpid(), signal.SIGTERM)

    spec = tiny_spec(tmp_path, epochs=3, steps=2)
    with pytest.raises(Stopped) as info:
        session.run(str(spec), callbacks=[Terminate()])
    stop = info.value
    assert not isinstance(stop, PlugtrainError)
    assert (stop.signum, stop.step, stop.at_once, stop.exit_code) == (signal.SIGTERM, 2, False, 143)
    assert Path(stop.checkpoint) == tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    assert Path(stop.checkpoint).is_file()


def test_a_second_ctrl_c_stops_at_once_with_the_checkpoint_to_continue_from(tmp_path):
    class CtrlCTwice:
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    spec = tiny_spec(tmp_path, epochs=3, steps=2)
    with pytest.raises(Stopped) as info:
        session.run(str(spec), callbacks=[CtrlCTwice()])
    stop = info.value
    assert (stop.signum, stop.at_once, stop.exit_code) == (signal.SIGINT, True, 130)
    assert Path(stop.checkpoint) == tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"  # epoch 1's


def test_a_nan_loss_is_a_numerical_fault_with_its_step(tmp_path):
    spec = tiny_spec(tmp_path, epochs=1, steps=3)
    with pytest.raises(NumericalFault) as info:
        session.run(str(spec), ["optimizer.lr=1e30", "optimizer.weight_decay=0.0"])
    fault = info.value
    assert isinstance(fault, TrainingFailed) and fault.exit_code == 1
    assert isinstance(fault.step, int) and 1 <= fault.step <= 3 and f"at step {fault.step}" in str(fault)
    assert fault.checkpoint is None and "No checkpoint had been written yet" in str(fault)


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_unreadable_file_while_training_is_a_data_fault_with_its_split_and_file(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                p = tmp_path / "images" / split / c / f"{i:02d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_png(rng))
    bad = tmp_path / "images" / "train" / "b" / "07.png"  # never the pre-flight's first sample
    bad.write_bytes(bad.read_bytes()[:40])
    spec = tmp_path / "folder.toml"
    spec.write_text(tomli_w.dumps({  # the same tiny run on an image folder, of which one file is cut short
        "run": {"name": "folder", "output_dir": (tmp_path / "runs").as_posix(), "epochs": 1},
        "data": {"dataset": "imagefolder", "root": (tmp_path / "images").as_posix(), "image_size": 16,
                 "batch_size": 4, "num_workers": 0},
        "backbone": {"name": "test_resnet", "in_chans": 3}, "loss": {"name": "CrossEntropy"},
        "optimizer": {"name": "SGD", "lr": 0.05}}), encoding="utf-8")
    with pytest.raises(DataFault) as info:
        session.run(str(spec))
    fault = info.value
    assert (fault.split, fault.file, fault.exit_code) == ("train", str(bad), 2)
    assert "continue with --resume auto" in fault.then and fault.then in str(fault)


def test_no_command_reads_an_error_s_text_a_traceback_s_frames_or_a_private_attribute():
    """The callers of the engine decide by type: no regex over messages, no frames, no ``trainer._x``."""
    callers = [*sorted((PACKAGE / "commands").glob("*.py")), PACKAGE / "api.py", *sorted((PACKAGE / "sweep").glob("*.py"))]
    problems = []
    for path in callers:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                if node.attr in ("__traceback__", "tb_frame", "tb_next", "f_code"):
                    problems.append(f"{path.name}:{node.lineno}: .{node.attr}")
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id in ("trainer", "exc") and node.attr.startswith("_")
                        and not node.attr.startswith("__")):
                    problems.append(f"{path.name}:{node.lineno}: {owner.id}.{node.attr}")
    assert not problems, problems


def test_the_typed_faults_keep_what_they_say_through_pickle():
    import pickle

    for exc in (DataFault("a/b.png", "not a readable image", "val", "then"), NumericalFault("nan", 3, Path("x.pt")),
                Stopped(signal.SIGTERM, None, 4, at_once=True)):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc) and vars(again) == vars(exc)
