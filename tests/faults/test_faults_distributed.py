"""Elastic restart and multi-node on loopback (issue 6, items 2 and 3): real ``torchrun`` agents, gloo on CPU.

The reference is one agent with two processes (``--nproc_per_node=2``), run without interruption. The elastic run
loses its rank-1 worker to SIGKILL in the middle of an epoch; the agent (``--max-restarts=1``) restarts the group,
``TORCHELASTIC_RESTART_COUNT > 0`` makes ``plugtrain train`` resume from the run's ``last.pt`` (written every 2 steps,
``trainer.checkpoint_every_steps``) and the final checkpoint must be bitwise equal to the reference. The multi-node
run is two agents with one process each meeting at a c10d rendezvous on 127.0.0.1; it must equal the reference too.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers_faults import (
    Run,
    assert_same_training_state,
    free_port,
    load,
    report,
    torchrun_cmd,
    worker_pid,
    write_spec,
)

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 4
SECTIONS = {"data": {"batch_size": 8, "num_workers": 0},  # 8 per process, a global batch of 16
            "trainer": {"checkpoint_every_steps": 2, "max_steps_per_epoch": STEPS}, "run": {"epochs": EPOCHS}}


def _spec(tmp: Path, name: str) -> Path:
    return write_spec(tmp / f"{name}.toml", tmp / "runs", **{**SECTIONS, "run": {**SECTIONS["run"], "name": name}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp-reference")
    run = Run(torchrun_cmd("train", _spec(tmp, "ref"), nproc=2))
    assert run.finish() == 0, run.output
    last = tmp / "runs" / "ref" / "checkpoints" / "last.pt"
    state = load(last)
    assert state["meta"]["world_size"] == 2 and state["global_step"] == EPOCHS * STEPS
    report("2-process reference", seconds=round(run.seconds, 1), global_step=state["global_step"])
    return last


def test_elastic_restart_after_a_worker_is_killed_resumes_by_itself(tmp_path, reference):
    kill_after = random.Random(2).choice([3, 5, 6, 7, 9, 10])
    spec = _spec(tmp_path, "elastic")
    run = Run(torchrun_cmd("train", spec, nproc=2, max_restarts=1))
    run.wait_for(rf"global_step {kill_after}\b")
    victim = worker_pid(run.pid, rank=1)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    resumed = run.wait_for(r"resuming from .* at epoch (\d+), batch (\d+)", timeout=180)
    restart_seconds = time.monotonic() - t0
    assert run.finish() == 0, run.output
    resumed_step = (int(resumed[1]) - 1) * STEPS + int(resumed[2])
    assert 2 <= resumed_step <= kill_after
    tensors = assert_same_training_state(tmp_path / "runs" / "elastic" / "checkpoints" / "last.pt", reference)
    report("elastic restart", killed_rank=1, killed_after_step=kill_after, resumed_from_step=resumed_step,
           seconds_kill_to_resumed=round(restart_seconds, 1), total_seconds=round(run.seconds, 1),
           tensors_bitwise_equal=tensors)


def test_two_agents_on_loopback_equal_one_agent_with_two_processes(tmp_path, reference):
    spec = _spec(tmp_path, "multinode")
    port = free_port()
    agents = [Run(torchrun_cmd("train", spec, nproc=1, nnodes=2, port=port, extra=["--local-addr=127.0.0.1"]))
              for _ in range(2)]
    codes = [a.finish() for a in agents]
    assert codes == [0, 0], "\n-----\n".join(a.output for a in agents)
    out = "\n".join(a.output for a in agents)
    assert "2 process(es)" in out
    tensors = assert_same_training_state(tmp_path / "runs" / "multinode" / "checkpoints" / "last.pt", reference)
    report("multi-node loopback", agents=2, nproc_per_node=1, seconds=[round(a.seconds, 1) for a in agents],
           tensors_bitwise_equal=tensors)
