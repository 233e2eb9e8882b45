"""``trainer.strategy = "fsdp"`` (issue 6, item 11): FSDP2 (``fully_shard``) under a real ``torchrun``, gloo on CPU.

One module-wide pair of reference runs of the same spec, 2 processes each: DDP and FSDP. The FSDP run must write the
run directory contract with its model and optimizer shards in a DCP directory named by ``last.pt``, and end bitwise
equal to the DDP run: the full model (parameters and batch-norm statistics), the optimizer states read back from the
shards, every epoch's metrics (the ranks run different numbers of validation batches). An FSDP run that loses a worker to SIGKILL restarts (elastic) from the sharded
checkpoint and ends bitwise equal to the uninterrupted one. ``plugtrain evaluate`` reads an FSDP run like any other;
options FSDP does not support are refused before anything is built; one process trains unsharded and can continue an
FSDP run from its shards.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_faults import (
    Run,
    _equal,
    child_env,
    load,
    plugtrain_cmd,
    report,
    torchrun_cmd,
    training_state,
    worker_pid,
    write_spec,
)

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 4
# 8 per process, a global batch of 16. Validation: 359 samples, 180 on rank 0 (2 batches of 179 + 1) and 179 on rank 1
# (1 batch): FSDP evaluation must not need the ranks' forwards in lockstep.
SECTIONS = {"data": {"batch_size": 8, "val_batch_size": 179, "num_workers": 0},
            "trainer": {"checkpoint_every_steps": 2, "max_steps_per_epoch": STEPS}, "run": {"epochs": EPOCHS}}


def _spec(tmp: Path, name: str, strategy: str = "fsdp", **trainer: Any) -> Path:
    return write_spec(tmp / f"{name}.toml", tmp / "runs", **{
        **SECTIONS, "run": {**SECTIONS["run"], "name": name},
        "trainer": {**SECTIONS["trainer"], "strategy": strategy, **trainer}})


def _ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _dcp_dirs(run_dir: Path) -> list[Path]:
    return sorted(_ckpt(run_dir).glob("last-*.dcp"))


def _shards(run_dir: Path, tmp: Path) -> dict[str, Any]:
    """The model and optimizer states of an fsdp run's last save, read back from its DCP directory (full tensors)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    directory = _ckpt(run_dir) / load(_ckpt(run_dir) / "last.pt")["sharded"]["dir"]
    out = tmp / f"{run_dir.name}-{directory.name}.pt"
    dcp_to_torch_save(directory, out)
    return torch.load(out, map_location="cpu", weights_only=True)


def _same(a: Any, b: Any, what: str) -> None:
    diffs: list[str] = []
    _equal(a, b, what, diffs)
    assert not diffs, "\n".join(diffs[:20])


def _without_optimizers(path: Path) -> dict[str, Any]:
    state = training_state(load(path))
    state.pop("optimizers")
    return state


def _optimizer_states_equal_ddp(shards: dict[str, Any], ddp_optimizer: dict[str, Any]) -> int:
    """The shards' optimizer state (keyed by parameter name) equals the DDP checkpoint's (keyed by position)."""
    import torch

    sharded, n = shards["optimizers"], 0
    assert len(sharded["param_groups"]) == len(ddp_optimizer["param_groups"])
    for ga, gb in zip(sharded["param_groups"], ddp_optimizer["param_groups"], strict=True):
        assert len(ga["params"]) == len(gb["params"])
        for name, index in zip(ga["params"], gb["params"], strict=True):
            a, b = sharded["state"][name], ddp_optimizer["state"][index]
            assert a.keys() == b.keys(), name
            for k in a:
                assert torch.equal(a[k], b[k]), f"optimizer state {name}.{k} differs from DDP's"
                n += 1
    return n


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fsdp-reference")
    out: dict[str, Any] = {"tmp": tmp}
    for strategy in ("ddp", "fsdp"):
        run = Run(torchrun_cmd("train", _spec(tmp, strategy, strategy), nproc=2))
        assert run.finish() == 0, run.output
        out[strategy] = tmp / "runs" / strategy
        out[f"{strategy}_seconds"] = round(run.seconds, 1)
        out[f"{strategy}_output"] = run.output
    return out


def test_fsdp_run_writes_sharded_checkpoints_and_equals_the_ddp_run(runs):
    run_dir = runs["fsdp"]
    assert "2 process(es)" in runs["fsdp_output"]
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "spec.toml", "env.json"):
        assert (run_dir / name).is_file(), name
    last = load(_ckpt(run_dir) / "last.pt")
    assert last["global_step"] == EPOCHS * STEPS and last["meta"]["world_size"] == 2
    info = last["sharded"]
    assert info["format"] == "torch.distributed.checkpoint" and info["world_size"] == 2
    directory = _ckpt(run_dir) / info["dir"]
    assert (directory / ".metadata").is_file()
    assert len(list(directory.glob("*.distcp"))) == 2  # one file per rank
    assert _dcp_dirs(run_dir) == [directory]  # the 5 earlier saves' directories were pruned
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + EPOCHS

    # bitwise the DDP run: full model and batch-norm statistics, loss, scheduler, every epoch's metrics, best
    ddp_last = _ckpt(runs["ddp"]) / "last.pt"
    fsdp_state, ddp_state = _without_optimizers(_ckpt(run_dir) / "last.pt"), _without_optimizers(ddp_last)
    _same(fsdp_state, ddp_state, "fsdp vs ddp")
    shards = _shards(run_dir, runs["tmp"])
    params = {k.removeprefix("backbone."): v for k, v in shards["model"].items() if k.startswith("backbone.")}
    assert params and not any("running_" in k for k in params)  # buffers (rank 0's) are in last.pt only
    _same(params, {k: v for k, v in fsdp_state["model"].items() if k in params}, "shards vs last.pt")
    optimizer_tensors = _optimizer_states_equal_ddp(shards, load(ddp_last)["optimizers"][0])
    report("fsdp vs ddp (2 processes, gloo)", fsdp_seconds=runs["fsdp_seconds"], ddp_seconds=runs["ddp_seconds"],
           model_tensors_bitwise_equal=len(fsdp_state["model"]), optimizer_tensors_bitwise_equal=optimizer_tensors,
           max_abs_diff=0.0)


def test_fsdp_elastic_restart_resumes_from_the_sharded_checkpoint(tmp_path, runs):
    kill_after = random.Random(11).choice([3, 5, 6, 7, 9, 10])
    spec = _spec(tmp_path, "fsdp")  # the reference's name: the same run, in another output_dir
    run = Run(torchrun_cmd("train", spec, nproc=2, max_restarts=1))
    run.wait_for(rf"global_step {kill_after}\b")
    os.kill(worker_pid(run.pid, rank=1), signal.SIGKILL)
    t0 = time.monotonic()
    resumed = run.wait_for(r"resuming from .* at epoch (\d+), batch (\d+)", timeout=180)
    restart_seconds = time.monotonic() - t0
    assert run.finish() == 0, run.output
    resumed_step = (int(resumed[1]) - 1) * STEPS + int(resumed[2])
    assert 2 <= resumed_step <= kill_after
    run_dir = tmp_path / "runs" / "fsdp"
    _same(_without_optimizers(_ckpt(run_dir) / "last.pt"), _without_optimizers(_ckpt(runs["fsdp"]) / "last.pt"),
          "resumed vs uninterrupted")
    a, b = _shards(run_dir, tmp_path), _shards(runs["fsdp"], tmp_path)
    _same(a, b, "resumed vs uninterrupted shards")
    assert len(_dcp_dirs(run_dir)) == 1  # the killed group's directories are gone too
    report("fsdp elastic restart", killed_rank=1, killed_after_step=kill_after, resumed_from_step=resumed_step,
           seconds_kill_to_resumed=round(restart_seconds, 1), total_seconds=round(run.seconds, 1),
           bitwise_equal="model, optimizer shards, history")


def test_evaluate_reads_an_fsdp_run_like_a_ddp_run(runs):
    env = child_env()
    procs = [subprocess.Popen(plugtrain_cmd("evaluate", runs[s], "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for s in ("fsdp", "ddp")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    fsdp_result, ddp_result = (json.loads(o) for o, _ in outs)
    assert fsdp_result["checkpoint"].endswith("best.pt") and fsdp_result["samples"] == 359
    assert set(fsdp_result["metrics"]) >= {"val/loss", "val/accuracy"}
    assert fsdp_result["metrics"] == ddp_result["metrics"]  # bitwise the same full model: the same metrics

def test_fsdp_refuses_options_it_does_not_support_before_anything_is_built(tmp_path):
    spec = _spec(tmp_path, "refused", precision="fp16", ema=True)
    p = subprocess.run(plugtrain_cmd("train", spec), capture_output=True, text=True, env=child_env(), timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    message = ('trainer.strategy = "fsdp" cannot be combined with precision = "fp16" (use "bf16"), ema = true (yet); '
               'use strategy = "ddp" for those')
    assert re.search(rf"^{re.escape(str(spec))}:\d+:\d+: {re.escape(message)}$", p.stderr, re.M), p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()
    c = subprocess.run(plugtrain_cmd("check", spec), capture_output=True, text=True, env=child_env(), timeout=120)
    assert c.returncode == 2 and message in c.stderr, c.stdout + c.stderr  # caught by check too


def test_one_process_trains_unsharded_and_continues_an_fsdp_run_from_its_shards(tmp_path, runs):
    """2 processes x 8 -> 1 process x 16 (the same global batch): DCP reshards the model and optimizer on load. The
    DDP run, continued the same way from its full-state last.pt, is the reference: the two must stay bitwise equal."""
    procs = {}
    for strategy in ("fsdp", "ddp"):
        shutil.copytree(runs[strategy], tmp_path / "runs" / strategy)
        spec = _spec(tmp_path, strategy, strategy)
        procs[strategy] = subprocess.Popen(
            plugtrain_cmd("train", spec, "--resume", "auto", "--set", f"run.epochs={EPOCHS + 1}",
                          "--set", "data.batch_size=16"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    outs = {s: p.communicate(timeout=180)[0] for s, p in procs.items()}
    assert [p.returncode for p in procs.values()] == [0, 0], outs
    out = outs["fsdp"]
    assert 'note: strategy = "fsdp" with one process: training unsharded' in out
    assert f"at epoch {EPOCHS + 1}, batch 0" in out and "1 process(es)" in out
    assert "Warning" not in out
    run_dir = tmp_path / "runs" / "fsdp"
    last = load(_ckpt(run_dir) / "last.pt")
    assert last["global_step"] == (EPOCHS + 1) * STEPS and "sharded" not in last
    assert _dcp_dirs(run_dir) == []  # last.pt no longer needs them
    ddp_last = _ckpt(tmp_path / "runs" / "ddp") / "last.pt"
    _same(training_state(last), training_state(load(ddp_last)), "fsdp-shards-resumed vs ddp-resumed")
