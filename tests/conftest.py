"""Shared helpers for the runtime tests: a tiny real run spec, the CLI in-process and as a subprocess, free ports.

The tiny spec trains timm's ``test_efficientnet`` (0.1M parameters) on scikit-learn's digits at 16x16 for a few
steps: a real run end to end (dataset, albumentations, timm, optimizer, scheduler, loggers) that takes a second or two.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers_cli import child_env, in_process
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# The suite never reads or writes the user's cache (the component catalog, dataset caches): one temporary cache
# folder per session, set before pytest-xdist starts its workers so that they and every CLI child share it.
if "PLUGTRAIN_TEST_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["PLUGTRAIN_TEST_CACHE"] = os.environ["PLUGTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="plugtrain-cache-")
    atexit.register(shutil.rmtree, os.environ["PLUGTRAIN_TEST_CACHE"], True)
QUICKSTART = REPO / "specs" / "quickstart.toml"

TINY_SPEC = """\
[run]
name = "{name}"
output_dir = "{output_dir}"
seed = {seed}
epochs = {epochs}

[data]
dataset = "sklearn-digits"
image_size = 16
batch_size = {batch_size}
num_workers = {num_workers}

[backbone]
name = "{backbone}"
in_chans = 1
{backbone_params}

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = 3e-3
weight_decay = 0.05

[scheduler]
name = "CosineAnnealingLR"
warmup_steps = 2

[augmentations]
train = [{{ name = "Affine", translate_percent = [-0.1, 0.1], rotate = [-10, 10], p = 0.8 }}]

[trainer]
max_steps_per_epoch = {steps}
log_every_steps = {log_every}
{extra}
"""


# Property tests are reproducible: the examples follow from the test itself (derandomize), so a failing example fails
# again on the next run and on CI, and no example database is kept between runs. HYPOTHESIS_PROFILE=explore draws
# fresh random examples each run (to look for new failures by hand; a failure prints the seed to reproduce it).
settings.register_profile("plugtrain", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "plugtrain"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers on the two cores), in-process torch uses one intra-op thread
    per worker, as the CLI children do (OMP_NUM_THREADS=1): two workers of two spinning threads each on two cores
    would slow both."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def tiny_spec(path: Path, name: str = "tiny", output_dir: Path | str | None = None, *, seed: int = 0, epochs: int = 2,
              batch_size: int = 16, num_workers: int = 0, backbone: str = "test_efficientnet", steps: int = 3,
              log_every: int = 1, backbone_params: str = "", extra: str = "") -> Path:
    """Write a tiny real run spec to ``path`` (a file, or a directory to put ``<name>.toml`` in); returns the file.

    ``backbone_params`` are TOML lines added to ``[backbone]``; ``extra`` is appended at the end of the
    ``[trainer]`` section (it may open further sections).
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}.toml"
    out = Path(output_dir) if output_dir is not None else path.parent / "runs"
    path.write_text(TINY_SPEC.format(name=name, output_dir=out.as_posix(), seed=seed, epochs=epochs,
                                     batch_size=batch_size, num_workers=num_workers, backbone=backbone, steps=steps,
                                     log_every=log_every, backbone_params=backbone_params,
                                     extra=extra), encoding="utf-8")
    return path


def cli(*args: Any) -> int:
    """The real command line, in this process (``plugtrain ARGS...``); returns the exit code."""
    from plugtrain.entrypoints.cli import main

    return main([str(a) for a in args])


@pytest.fixture
def cli_run(capfd, monkeypatch):
    """``cli_run(ARGS..., cwd=None)``: :func:`run_cli`'s in-process twin, returning the same CompletedProcess (exit
    code, stdout, stderr captured at the file descriptors). For commands that need no interpreter of their own (no
    signals, torchrun or environment of their own): bad-input paths above all, which end before any training, so
    the few seconds of a fresh interpreter (importing torch, timm, albumentations) are most of their cost."""
    return in_process(capfd, monkeypatch)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess (:func:`helpers_cli.child_env`)."""
    return child_env(**extra)


def run_cli(*args: Any, timeout: float = 300, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m plugtrain ARGS...`` as a subprocess (stdout is a pipe, so output is plain)."""
    return subprocess.run([sys.executable, "-m", "plugtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or subprocess_env(), cwd=cwd)


def run_torchrun(nproc: int, *args: Any, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node=N -m plugtrain ARGS...`` on a free port (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "plugtrain", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or subprocess_env())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_state(checkpoint: Path) -> dict[str, Any]:
    """The model state of a checkpoint, loaded the safe way."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


def max_rel_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest relative difference ``||a - b|| / ||b||`` over the floating tensors (keys must match; the other
    tensors must be equal)."""
    import torch

    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        x, y = a[k], b[k]
        if not torch.is_floating_point(x):
            assert torch.equal(x, y), k
            continue
        x, y = x.double(), y.double()
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-12)))
    return worst


@pytest.fixture
def spec_factory(tmp_path: Path):
    """``spec_factory(name="tiny", **options)`` -> the path of a tiny spec under ``tmp_path`` (runs in tmp/runs)."""

    def make(name: str = "tiny", **options: Any) -> Path:
        return tiny_spec(tmp_path, name, tmp_path / "runs", **options)

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run in-process training on one intra-op thread (the 2 cores are shared; OpenMP spinning on a busy core
    costs more than it gains), as the CLI subprocesses do with OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
