"""Issue 21, item 8: after a mid-epoch resume the epoch's timings count the steps run since the resume only.

A real child process is stopped by SIGTERM in the middle of its only epoch (``last.pt`` at that step) and resumed;
the epoch's ``train/throughput``, ``train/epoch_time`` and per-step times are read back from TensorBoard's events:
the samples they count are those of the batches run after the resume, and the parts of a step add up to at most
the whole (the compute time of the steps before the interruption is not counted against the time since)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import cli, tiny_spec
from helpers_faults import Run, child_env, plugtrain_cmd

from plugtrain.core.runtime import checkpoint as ckpt

STEPS, BATCH = 16, 16


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of a run's TensorBoard events, read with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_timings_after_a_mid_epoch_resume_count_only_the_steps_since_the_resume(tmp_path, one_torch_thread):
    spec = tiny_spec(tmp_path, "timed", tmp_path / "runs", epochs=1, steps=STEPS, batch_size=BATCH)
    run_dir = tmp_path / "runs" / "timed"
    run = Run(plugtrain_cmd("train", spec), env=child_env())
    run.wait_for(r"global_step 3\b")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM, run.output
    stopped = ckpt.load(run_dir / "checkpoints" / "last.pt")["batch_in_epoch"]
    assert 3 <= stopped < STEPS, stopped
    assert cli("train", spec, "--resume", "auto") == 0
    tb = scalars(run_dir)
    epoch = {tag: values[STEPS] for tag, values in tb.items() if tag.startswith("train/") and STEPS in values}
    since = STEPS - stopped
    # throughput x epoch time = the samples of the batches run since the resume (not the whole epoch's)
    assert epoch["train/throughput"] * epoch["train/epoch_time"] == pytest.approx(since * BATCH, rel=1e-3), epoch
    # the step time is the epoch time over the steps since the resume; its parts add up to it, no more
    assert epoch["train/epoch_time"] / epoch["train/step_time"] == pytest.approx(since, rel=1e-3), epoch
    assert epoch["train/compute_time"] <= epoch["train/step_time"], epoch
    assert epoch["train/data_time"] + epoch["train/compute_time"] <= epoch["train/step_time"] * (1 + 1e-6), epoch
