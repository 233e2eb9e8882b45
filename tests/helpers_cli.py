"""The command line in tests, shared by the core suite's conftest and the extras' tests (which have no conftest):
``in_process`` runs ``plugtrain ARGS...`` in this process with its output captured at the file descriptors, and
``child_env`` is the environment of a CLI child process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: torchrun's variables: a child started by a test under torchrun must not think it is one of its ranks.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: one thread per process (2 shared cores), no torchrun variables."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def in_process(capfd: Any, monkeypatch: Any, **env: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(ARGS..., cwd=None)``: the real command line in this process (``env`` set while it runs), returning a
    CompletedProcess like a child's (exit code; stdout and stderr captured at the file descriptors). For commands
    that need no interpreter of their own (no signals, torchrun or environment of their own)."""
    from plugtrain.entrypoints.cli import main

    def run(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            if cwd is not None:
                m.chdir(cwd)
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["plugtrain", *map(str, args)], code, out, err)

    return run
