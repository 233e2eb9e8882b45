"""Shared by the experiment trackers' tests (``extras/plugtrain-mlflow/tests``, ``extras/plugtrain-wandb/tests``).

Their runs are the core suite's tiny real run (:func:`conftest.tiny_spec`) with two metrics and the loggers under
test; a test-only "stopper" logger plugin stops a run at the end of an epoch, right after the loggers listed before it
have logged that epoch; children run with one thread, plain output and none of the tracker's own variables.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import tiny_spec
from helpers_faults import child_env
from helpers_plugins import make_dist

#: The metrics every tracker run logs: a scalar and an image (the confusion matrix).
METRICS = '\n[[metrics]]\nname = "accuracy"\n\n[[metrics]]\nname = "confusion_matrix"\n\n'

#: The test-only logger: once, at the end of epoch ``at_epoch``, ``sleep`` seconds after it was logged, it stops its
#: own process: ``how = "kill"`` SIGKILL (before ``last.pt`` of that epoch is written; nobody closes anything),
#: ``how = "term"`` SIGTERM (what a preemption sends: plugtrain writes ``last.pt``, closes the loggers and exits 143),
#: ``how = "raise"`` an exception (the run fails, exit 1; the runtime closes the loggers).
STOPPER = '''
import os, signal, time
from pathlib import Path
from plugtrain import Component, hookimpl

class Stopper:
    def __init__(self, run_dir: Path, at_epoch: int = 2, how: str = "kill", sleep: float = 0.0) -> None:
        self.marker = Path(run_dir) / f"stopped-{how}-{at_epoch}"
        self.at_epoch, self.how, self.sleep = at_epoch, how, sleep

    def log_metrics(self, metrics, step):
        if metrics.get("epoch") == self.at_epoch and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            time.sleep(self.sleep)
            if self.how == "raise":
                raise RuntimeError("stopped by the test")
            os.kill(os.getpid(), signal.SIGKILL if self.how == "kill" else signal.SIGTERM)

    def close(self):
        pass

@hookimpl
def plugtrain_loggers():
    return [Component("test-stopper", Stopper)]
'''


def write_spec(folder: Path, loggers: str, name: str = "tiny", epochs: int = 2) -> Path:
    """``<folder>/<name>.toml``: the tiny run (into ``<folder>/runs``) with :data:`METRICS` and ``loggers`` (TOML)."""
    return tiny_spec(folder, name, folder / "runs", epochs=epochs, extra=METRICS + loggers)


def stopper_path(root: Path) -> Path:
    """The stopper plugin as ``pip install`` would leave it under ``root`` (for PYTHONPATH)."""
    return make_dist(root, "plugtrain-test-stopper", {"stopper": "pt_tracker_test_stopper"},
                     {"pt_tracker_test_stopper": STOPPER})


def tracker_env(prefix: str, paths: list[Path] = (), **extra: str) -> dict[str, str]:
    """:func:`helpers_faults.child_env` without the tracker's variables (``prefix``, e.g. ``"MLFLOW_"``), plus
    ``extra`` (the session's cache folder is kept, as ``child_env`` keeps it)."""
    env = {k: v for k, v in child_env(paths).items() if not k.startswith(prefix)}
    env.update(extra)
    return env


def plugtrain(*args: Any, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m plugtrain ARGS...`` in a child with ``env``."""
    return subprocess.run([sys.executable, "-m", "plugtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_listed_without_importing(logger: str, env: dict[str, str]) -> None:
    """``plugtrain list loggers --json`` (in a child with ``env``, under ``-X importtime``) lists ``logger`` with its
    distribution ``plugtrain-<logger>`` 0.1.0 and never imports the library ``logger`` (it may import the plugin module:
    the registry can cache summaries). Both ways a command lists: the live registry (``PLUGTRAIN_NO_CATALOG=1``: the
    plugin module imports its library lazily) and a fresh component catalog (a first run builds it when missing or
    stale; building imports every plugin's libraries, timm's included, and timm imports wandb when installed)."""
    command = [sys.executable, "-X", "importtime", "-m", "plugtrain", "list", "loggers", "--json"]
    subprocess.run(command, capture_output=True, timeout=120, env=env)
    for how in ({"PLUGTRAIN_NO_CATALOG": "1"}, {}):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**env, **how})
        assert proc.returncode == 0, proc.stderr
        row = {r["name"]: r for r in json.loads(proc.stdout)}[logger]
        assert (row["plugin"], row["distribution"], row["version"]) == (logger, f"plugtrain-{logger}", "0.1.0")
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert not {m for m in imported if m == logger or m.startswith(f"{logger}.")}, how


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's ``metrics.csv``."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))
