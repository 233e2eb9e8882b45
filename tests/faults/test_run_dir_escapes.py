"""Issue 12, class 2: nothing a component writes leaves the run directory.

A parameter that names a file or folder a component writes is annotated ``RunPath``: ``plugtrain check`` refuses an
absolute path, ``..``, an empty name or a NUL byte with ``file:line:col``, for the built-in loggers and for any
plugin's; at run time ``run_path(run_dir, relative, what=...)`` (the one way for a component to get such a path) also
refuses a symbolic link that leads outside.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli, run_cli, subprocess_env, tiny_spec
from helpers_plugins import make_dist

from plugtrain.core.errors import PlugtrainError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ESCAPES = [
    ('loggers=[{ name = "csv", filename = "../../escaped.csv" }]', "climbs out of the run directory"),
    ('loggers=[{ name = "csv", filename = "/tmp/plugtrain-escaped.csv" }]', "is an absolute path"),
    ('loggers=[{ name = "tensorboard", subdir = "../../escaped-tb" }]', "climbs out of the run directory"),
    ('loggers=[{ name = "tensorboard", subdir = "a/../../../escaped-tb" }]', "climbs out of the run directory"),
    ('loggers=[{ name = "csv", filename = "" }]', "is empty"),
]


@pytest.mark.parametrize("override, fragment", ESCAPES, ids=[e[0][22:60] for e in ESCAPES])
def test_a_logger_path_outside_the_run_directory_is_refused_before_anything_is_written(tmp_path, capfd, override,
                                                                                       fragment):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    spec = tiny_spec(folder, epochs=1, steps=1)
    before = sorted(tmp_path.rglob("*"))
    for command in ("check", "train"):
        capfd.readouterr()
        assert cli(command, spec, "--set", override) == 2
        err = capfd.readouterr().err
        assert "Traceback" not in err and f"--set {override}: loggers[0]." in err and fragment in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing escaped, no run directory
    assert not Path("/tmp/plugtrain-escaped.csv").exists()


def test_run_path_refuses_a_symbolic_link_that_leads_outside(tmp_path):
    from plugtrain.core.runtime.rundir import run_path

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "outside").mkdir()
    (run_dir / "tb").symlink_to(tmp_path / "outside")
    with pytest.raises(PlugtrainError, match=r"\[loggers\] x subdir: 'tb' leads to .*outside the run directory"):
        run_path(run_dir, "tb", what="[loggers] x subdir")
    assert run_path(run_dir, "sub/metrics.csv", what="x") == run_dir / "sub" / "metrics.csv"
    for bad in ("/etc/passwd", "../x", "x/../../y", "", "a\x00b", "~/x", "C:\\x"):
        with pytest.raises(PlugtrainError):
            run_path(run_dir, bad)


def test_the_tensorboard_logger_refuses_a_linked_folder_that_leads_outside(tmp_path, capfd):
    """Found only at run time (a symbolic link in the run directory): exit 2, the run directory rolled back."""
    spec = tiny_spec(tmp_path, epochs=1, steps=1)
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    (tmp_path / "elsewhere").mkdir()
    (run_dir / "linked").symlink_to(tmp_path / "elsewhere")
    capfd.readouterr()
    assert cli("train", spec, "--resume", "auto", "--set", "run.epochs=2",
               "--set", 'loggers=[{ name = "tensorboard", subdir = "linked/tb" }]') == 2
    assert "outside the run directory" in capfd.readouterr().err
    assert list((tmp_path / "elsewhere").iterdir()) == []


PLUGIN = """
from pathlib import Path

from plugtrain import Component, hookimpl
from plugtrain.core.runtime.rundir import RunPath, run_path


class NotesLogger:
    def __init__(self, run_dir: Path, filename: RunPath = "notes.txt") -> None:
        self.path = run_path(run_dir, filename, what="[loggers] pt-notes filename")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def log_metrics(self, metrics, step):
        with self.path.open("a") as f:
            f.write(f"{step} {metrics}\\n")

    def close(self):
        pass


@hookimpl
def plugtrain_loggers():
    return [Component("pt-notes", NotesLogger, summary="notes in the run directory")]
"""


@pytest.mark.slow
def test_a_plugin_parameter_annotated_runpath_is_checked_like_the_built_ins(tmp_path):
    paths = make_dist(tmp_path / "plugin", "pt-notes", {"ptnotes": "pt_notes"}, {"pt_notes": PLUGIN})
    env = subprocess_env(PYTHONPATH=str(paths))
    spec = tiny_spec(tmp_path, epochs=1, steps=1,
                     extra='\n[[loggers]]\nname = "pt-notes"\nfilename = "../outside.txt"\n')
    proc = run_cli("check", spec, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = next(i for i, x in enumerate(spec.read_text().splitlines(), 1) if x.startswith("filename"))
    assert f"{spec}:{line}:12: loggers[0].filename: '../outside.txt' climbs out of the run directory" in proc.stderr
    spec.write_text(spec.read_text().replace("../outside.txt", "notes/run.txt"))
    proc = run_cli("train", spec, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "tiny" / "notes" / "run.txt").read_text().startswith("1 ")
    assert not (tmp_path / "outside.txt").exists()
