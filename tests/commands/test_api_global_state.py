"""``plugtrain.train`` leaves the caller's process as it found it: RNGs, torch's determinism and backend flags,
threads, default dtype, grad mode, warning filters, logger levels, environment variables and signal handlers are the
same after a run (finished or failed) as before; Ctrl-C inside ``train`` raises ``KeyboardInterrupt`` once ``last.pt``
is written."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import subprocess_env

import plugtrain
from plugtrain.core.errors import TrainingFailed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec_dict(output_dir: Path, name: str, **run: Any) -> dict[str, Any]:
    return {
        "run": {"name": name, "output_dir": str(output_dir), "epochs": 1, **run},
        "data": {"dataset": "sklearn-digits", "image_size": 16, "batch_size": 16, "num_workers": 0},
        "backbone": {"name": "test_efficientnet", "in_chans": 1},
        "loss": {"name": "CrossEntropy"},
        "optimizer": {"name": "AdamW", "lr": 3e-3},
        "trainer": {"max_steps_per_epoch": 2, "clip_grad_norm": 1.0},
    }


def process_state() -> dict[str, Any]:
    """Everything process-wide a run could change, in comparable form."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    legacy = np.random.get_state()
    state = {
        "random": random.getstate(),
        "numpy": (legacy[0], legacy[1].tolist(), *legacy[2:]),
        "torch": torch.get_rng_state().tolist(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (cudnn.enabled, cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
        "matmul": (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
                   matmul.allow_bf16_reduced_precision_reduction, torch.get_float32_matmul_precision()),
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "warning filters": list(warnings.filters),
        "signals": (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)),
        "environ": dict(os.environ),
        "loggers": {n: lg.level for n, lg in logging.Logger.manager.loggerDict.items()
                    if isinstance(lg, logging.Logger)} | {"": logging.getLogger().level},
        "cwd": os.getcwd(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Equal, but for loggers that libraries first imported by the run created (their import's own business)."""
    after = {**after, "loggers": {n: v for n, v in after["loggers"].items() if n in before["loggers"]}}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"train() changed the caller's {', '.join(changed)}"


def caller_state_unlike_a_run() -> None:
    """A caller's state that no run restores by accident: seeded RNGs part-way through, fast (non-deterministic)
    algorithms, a float32 matmul precision and a warning filter of its own."""
    random.seed(11)
    random.random()
    np.random.seed(12)
    np.random.rand(3)
    torch.manual_seed(13)
    torch.rand(3)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("high")
    warnings.filterwarnings("ignore", message="caller's own filter")


@pytest.fixture
def restore_torch_flags():
    """This test's own changes to the process (the caller's state it sets up) are undone afterwards."""
    precision, bench = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    with warnings.catch_warnings():
        yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = bench


def test_a_deterministic_run_leaves_the_caller_s_state_as_it_was(tmp_path, restore_torch_flags):
    caller_state_unlike_a_run()
    before = process_state()
    result = plugtrain.train(spec_dict(tmp_path / "runs", "det", deterministic=True))
    assert result.history
    assert_same_state(before, process_state())


def test_a_failing_run_and_repeated_runs_leave_it_too(tmp_path, restore_torch_flags):
    caller_state_unlike_a_run()
    before = process_state()
    with pytest.raises(TrainingFailed):  # a NaN loss while training: raised after the run changed the process
        plugtrain.train(spec_dict(tmp_path / "runs", "nan", deterministic=True),
                        set={"optimizer.lr": 1e30, "optimizer.weight_decay": 0.0})
    assert_same_state(before, process_state())
    for k in range(2):  # no filter (nor anything else) piles up run after run
        plugtrain.train(spec_dict(tmp_path / "runs", f"again{k}"))
        assert_same_state(before, process_state())
    assert len(warnings.filters) == len(before["warning filters"])


_CHILD = """
import sys, plugtrain
spec = {spec!r}
try:
    plugtrain.train(spec)
except KeyboardInterrupt as exc:
    print("KeyboardInterrupt:", exc, flush=True)
    sys.exit(7)
except BaseException as exc:
    print("other:", type(exc).__name__, exc, flush=True)
    sys.exit(8)
print("finished", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_inside_train_raises_keyboard_interrupt_after_last_pt(tmp_path):
    """A real SIGINT to a process inside ``plugtrain.train``: the caller's ``except KeyboardInterrupt`` sees it, and
    the run's last.pt is there to resume from."""
    spec = spec_dict(tmp_path / "runs", "sigint")
    spec["run"]["epochs"] = 50
    spec["trainer"].update(max_steps_per_epoch=100, log_every_steps=1)
    proc = subprocess.Popen([sys.executable, "-u", "-c", _CHILD.format(spec=spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=subprocess_env(PLUGTRAIN_PLAIN="1"))
    out = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # a progress line: training (and its signal handling) has started
            out.append(line)
            if "global_step" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(out) + rest
    assert proc.returncode == 7, text
    assert "KeyboardInterrupt: interrupted by SIGINT at step" in text, text
    assert (tmp_path / "runs" / "sigint" / "checkpoints" / "last.pt").is_file(), text
