"""The training loss and sample counts, kept on the device and read at log intervals only.

Per epoch: the running loss sum and count, samples, skipped samples and training time (checkpointed per rank, so
that a mid-epoch resume continues every rank's own loss sums; the timings start again at a resume and count the
steps run since). Per log interval: the micro-batch losses since the last
look, read back in one device sync by :meth:`LossTracker.read_interval`, which also finds a non-finite loss.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch


class LossTracker:
    def __init__(self, device: torch.device, fp16: bool) -> None:
        self.device, self.fp16 = device, fp16
        self.reset_epoch()
        self.reset_interval()

    def reset_epoch(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.samples = 0
        self.skipped = 0
        self.skipped_files: list[str] = []  # the first few, for the end-of-epoch message (this rank's)
        self.train_time = 0.0  # the epoch's seconds in the training loop
        self.data_time = 0.0  # of which waiting for the next batch
        self.compute_time = 0.0  # of which forward, backward, step and bookkeeping
        self.steps = 0  # optimizer steps

    def reset_interval(self) -> None:
        self.interval_losses: list[torch.Tensor] = []
        self.interval_steps: list[int] = []
        self.interval_samples = 0
        self.interval_start = time.monotonic()

    def skip(self, files: list[str]) -> None:
        self.skipped += len(files)
        self.skipped_files += files[:max(5 - len(self.skipped_files), 0)]

    def record(self, loss: torch.Tensor, samples: int, step: int) -> None:
        """One micro-batch's loss, of optimizer step ``step`` (1-based)."""
        if self.fp16:  # the scaler skips non-finite steps; average the finite losses
            finite = torch.isfinite(loss)
            self.loss_sum += torch.where(finite, loss, 0.0).double()
            self.loss_count += finite.double()
        else:
            self.loss_sum += loss.double()
            self.loss_count += 1
        self.interval_losses.append(loss)
        self.interval_steps.append(step)
        self.interval_samples += samples
        self.samples += samples

    def read_interval(self) -> tuple[float, int, int, float]:
        """``(sum of the finite losses, their number, first bad step or 0, its loss)`` of the interval so far (a
        device sync). Under fp16, isolated non-finite losses are steps the scaler skipped, not a failure."""
        losses = torch.stack(self.interval_losses).float().cpu() if self.interval_losses else torch.zeros(0)
        finite = torch.isfinite(losses)
        bad = ~finite
        if self.fp16 and bad.any() and not bad.all():
            bad = torch.zeros_like(bad)
        bad_step, bad_value = 0, math.nan
        if bad.any():
            first = int(bad.nonzero()[0])
            bad_step, bad_value = self.interval_steps[first], float(losses[first])
        return float(losses[finite].sum()), int(finite.sum()), bad_step, bad_value

    def interval_throughput(self, world_size: int) -> float:
        return self.interval_samples * world_size / max(time.monotonic() - self.interval_start, 1e-9)

    def step_times(self, device: torch.device) -> dict[str, float]:
        """Seconds per optimizer step this epoch: waiting for data, computing, and the whole step (this rank's); on
        a GPU also its peak allocated memory in MiB (reset for the next epoch)."""
        n = max(self.steps, 1)
        out = {"train/data_time": self.data_time / n, "train/compute_time": self.compute_time / n,
               "train/step_time": self.train_time / n}
        if device.type == "cuda":
            out["train/gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        return out

    def epoch_totals(self, dist: Any) -> tuple[float, float, float, int]:
        """``(mean loss, samples/s, seconds, skipped samples)`` of the epoch over every rank (collective)."""
        totals = dist.all_reduce(torch.stack([self.loss_sum, self.loss_count]).to(dist.reduce_device))
        loss_sum, loss_count = totals.tolist()
        skipped = self.skipped
        if dist.distributed:
            skipped = int(dist.all_reduce(dist.collective_tensor([float(skipped)]))[0].item())
        throughput = self.samples * dist.world_size / max(self.train_time, 1e-9)
        return (loss_sum / loss_count if loss_count else math.nan), throughput, self.train_time, skipped

    def epoch_row(self, epoch: int, lrs: list[float], dist: Any, device: torch.device) -> dict[str, float]:
        """The training half of epoch ``epoch``'s metrics: loss, learning rates, throughput, time, step times and
        skipped samples (summed over the ranks)."""
        loss, throughput, seconds, skipped = self.epoch_totals(dist)
        return {"epoch": epoch, "train/loss": loss, "train/lr": lrs[0],
                **{f"train/lr_{i}": lr for i, lr in enumerate(lrs[1:], 1)},
                "train/throughput": throughput, "train/epoch_time": seconds,
                **self.step_times(device), "data/skipped": skipped}

    def skipped_message(self, epoch: int, skipped: float) -> str:
        files = ", ".join(self.skipped_files) + (", ..." if skipped > len(self.skipped_files) else "")
        return (f"epoch {epoch}: skipped {int(skipped)} unreadable sample(s) (data.on_error = \"skip\")"
                + (f": {files}" if self.skipped_files else ""))

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's running sums of the epoch in progress."""
        return {"loss_sum": self.loss_sum.detach().cpu(), "loss_count": self.loss_count.detach().cpu(),
                "samples": self.samples, "skipped": self.skipped, "train_time": self.train_time,
                "data_time": self.data_time, "compute_time": self.compute_time, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The epoch's loss sums and skipped samples continue; its timings (``samples``, ``steps`` and the seconds,
        what ``train/throughput`` and the step times are made of) start again at zero: after a resume they count
        the steps run since the resume only, never the steps of another process's lifetime against this one's time."""
        self.loss_sum = state["loss_sum"].to(self.device, torch.float64)
        self.loss_count = state["loss_count"].to(self.device, torch.float64)
        self.skipped = int(state["skipped"])

    def resume(self, state: dict[str, Any], rank: int, world_size: int) -> None:
        """From a checkpoint: this rank's running sums when it was written mid-epoch, else a fresh epoch."""
        self.reset_epoch()
        states = state.get("epoch_states") or ([state["epoch_state"]] if state.get("epoch_state") else [])
        share = self.rank_share(states, rank, world_size)
        if int(state.get("batch_in_epoch", 0)) and share:
            self.load_state_dict(share)

    @staticmethod
    def rank_share(states: list[dict[str, Any]], rank: int, world_size: int) -> dict[str, Any]:
        """This rank's share of a checkpoint's per-rank sums: its own when the world size is the same; otherwise rank
        0 takes the totals and the other ranks start from zero (the epoch's totals stay right)."""
        if not states:
            return {}
        if len(states) == world_size:
            return states[rank]
        if rank:
            return {}
        return {"loss_sum": sum(e["loss_sum"] for e in states), "loss_count": sum(e["loss_count"] for e in states),
                "samples": sum(int(e["samples"]) for e in states), "skipped": sum(int(e["skipped"]) for e in states),
                "train_time": max(float(e["train_time"]) for e in states),
                "data_time": max(float(e.get("data_time", 0.0)) for e in states),
                "compute_time": max(float(e.get("compute_time", 0.0)) for e in states),
                "steps": max(int(e.get("steps", 0)) for e in states)}
