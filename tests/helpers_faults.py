"""Helpers for the fault tests (``tests/test_faults_*.py``): real runs in real child processes, killed for real.

* :func:`write_spec` — a tiny real run spec (timm ``test_resnet`` on scikit-learn's digits at 16x16) as TOML, with
  any key overridden;
* :class:`Run` — ``plugtrain train`` (or ``torchrun ... -m plugtrain train``) as a child process in its own process
  group, its stdout read line by line on a thread, so that a test can wait for ``global_step 7`` and then kill it;
* :func:`fault_plugin_path` — the ``tests/fixtures/plugins/pt_faults.py`` plugin (NaN loss, broken factory) as an
  installed distribution on a temporary path;
* :func:`assert_same_training_state` — bitwise comparison of two checkpoints' model, loss, optimizer and metrics.
"""

from __future__ import annotations

import copy
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from helpers_plugins import fixture_dist

REPO = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "run": {"name": "r", "seed": 0, "epochs": 3},
    "data": {"dataset": "sklearn-digits", "upscale": 2, "image_size": 16, "batch_size": 16, "num_workers": 0},
    "backbone": {"name": "test_resnet", "in_chans": 1, "drop_rate": 0.1},
    "loss": {"name": "CrossEntropy"},
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    "augmentations": {"train": [{"name": "Affine", "rotate": [-15, 15], "translate_percent": [-0.1, 0.1],
                                 "p": 0.8}]},
    "loggers": [{"name": "csv"}, {"name": "console"}],
    "trainer": {"max_steps_per_epoch": 4, "log_every_steps": 1},
}

#: Variables a torchrun parent would leave behind; a child must not inherit them from the test process.
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RESTART_COUNT", "GROUP_RANK", "ROLE_RANK")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, Mapping) else v for k, v in d.items() if v is not None}


def write_spec(path: Path, output_dir: Path, **sections: Any) -> Path:
    """``BASE`` with ``sections`` merged in (``run={"seed": 1}``; a key set to None is removed), ``run.output_dir``
    set; written as TOML."""
    spec = _drop_none(merge(BASE, sections))
    spec["run"]["output_dir"] = str(output_dir)
    path.write_text(tomli_w.dumps(spec), encoding="utf-8")
    return path


#: The suite's own cache folder (conftest.py), shared by every child: the component catalog is built once.
_KEPT = ("PLUGTRAIN_CACHE_DIR", "PLUGTRAIN_TEST_CACHE")


def child_env(paths: Iterable[Path | str] = (), **extra: str) -> dict[str, str]:
    """One thread per process, plain unbuffered output, no inherited torchrun or plugin switches."""
    env = {k: v for k, v in os.environ.items()  # the session's cache folder is kept: never the user's cache
           if k not in _DIST_ENV and (not k.startswith(("PLUGTRAIN_", "TORCHELASTIC_")) or k in _KEPT)}
    pythonpath = [str(p) for p in paths] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PLUGTRAIN_PLAIN="1")
    env.update(extra)
    return env


def fault_plugin_path(root: Path) -> Path:
    """The fault-injection plugin installed (a ``*.dist-info`` + module) under ``root``; put it on PYTHONPATH."""
    if not (root / "pt_faults.py").exists():
        fixture_dist(root, "plugtrain-faults", {"faults": "pt_faults"})
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plugtrain_cmd(*args: Any) -> list[str]:
    return [sys.executable, "-m", "plugtrain", *map(str, args)]


def torchrun_cmd(*args: Any, nproc: int = 2, nnodes: int = 1, port: int | None = None,
                 max_restarts: int = 0, extra: Iterable[str] = ()) -> list[str]:
    """``python -m torch.distributed.run ... -m plugtrain ARGS`` with a c10d rendezvous on loopback."""
    port = port or free_port()
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--max-restarts={max_restarts}",
            "--monitor-interval=0.2", *extra, "-m", "plugtrain", *map(str, args)]


class Run:
    """A child process in its own process group; stdout and stderr merged and read line by line on a thread."""

    def __init__(self, cmd: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(env or child_env()), cwd=cwd or REPO, start_new_session=True,
                                     errors="replace")
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line arrived (seconds since start)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.times.append(time.monotonic() - self.t0)
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match[str]:
        """Block until a line matches ``pattern`` (a regex); fail with the output if the process ends first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill_group()
                raise AssertionError(f"no line matched {pattern!r} within {timeout} s:\n{self.output[-4000:]}")
            try:
                line = self._queue.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended (exit {self.proc.wait()}) before a line matched "
                                     f"{pattern!r}:\n{self.output[-4000:]}")
            m = rx.search(line)
            if m:
                return m

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"still running after {timeout} s:\n{self.output[-4000:]}") from None
        self._reader.join(timeout=10)
        self.seconds = time.monotonic() - self.t0
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process itself (not its DataLoader workers)."""
        os.kill(self.proc.pid, sig)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (what a scheduler does)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, timeout: float = 300) -> int:
        """Wait, then make sure nothing of the group is left (DataLoader workers of a killed process)."""
        code = self.wait(timeout)
        self.kill_group()
        return code


def kill_after_checkpoint(run: Run, last: Path, line: str, *, epoch: int, batch: int, timeout: float = 240) -> None:
    """SIGKILL ``run`` once a line matches ``line`` and then ``last`` holds a mid-epoch checkpoint at or past
    ``batch`` of the 0-based ``epoch`` (polled: the kill lands between two checkpoints, never on a torn file)."""
    run.wait_for(line, timeout)
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None and time.monotonic() < deadline:
        try:
            state = load(last)
        except Exception:  # noqa: BLE001 - not there yet, or being replaced right now
            continue
        if state["epoch"] == epoch and state.get("batch_in_epoch", 0) >= batch:
            run.kill()
            break
    assert run.wait() == -signal.SIGKILL, run.output[-3000:]


def children(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def worker_pid(agent_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with global rank ``rank`` under the agent ``agent_pid``."""
    for pid in children(agent_pid):
        if environ_of(pid).get("RANK") == str(rank):
            return pid
    raise AssertionError(f"no worker with RANK={rank} under torchrun {agent_pid}")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _equal(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                d = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "?"
                diffs.append(f"{where}: max |diff| {d}")
            else:
                diffs.append(f"{where}: {type(a).__name__} vs {type(b).__name__}")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            diffs.append(f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}")
            return
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}", diffs)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]", diffs)
        return
    if a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        diffs.append(f"{where}: {a!r} vs {b!r}")


#: Metrics that measure time, not training: they differ between any two runs.
TIMING = ("train/throughput", "train/epoch_time", "train/data_time", "train/compute_time", "train/step_time")


def training_state(state: dict[str, Any]) -> dict[str, Any]:
    """What must be bitwise equal between an interrupted-and-resumed run and an uninterrupted one."""
    history = [{k: v for k, v in row.items() if k not in TIMING} for row in state.get("history") or []]
    return {"epoch": state["epoch"], "global_step": state["global_step"], "model": state["model"],
            "loss": state["loss"], "optimizers": state["optimizers"], "scheduler": state["scheduler"],
            "history": history, "best": state["best"]}


def assert_same_training_state(a_path: Path, b_path: Path) -> int:
    """Two checkpoints hold bitwise the same training state; returns the number of tensors compared."""
    a, b = training_state(load(a_path)), training_state(load(b_path))
    diffs: list[str] = []
    _equal(a, b, "state", diffs)
    history = [d for d in diffs if ".history" in d or ".best" in d or "step" in d]
    assert not diffs, f"{a_path} and {b_path} differ:\n" + "\n".join(history[:20] + diffs[:10])
    return count_tensors(a)


def count_tensors(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_tensors(v) for v in obj)
    return 0


def report(item: str, **measured: Any) -> None:
    """One line of measurements (``pytest -s`` shows it)."""
    print(f"\n[faults] {item}: " + ", ".join(f"{k}={v}" for k, v in measured.items()), flush=True)
