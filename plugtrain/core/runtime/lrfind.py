"""The learning-rate range test and the batch-size probe, on a spec's own model, data, optimizer and augmentations.

:func:`find_lr` is the exponential range test of Smith (2015), as fastai's ``lr_find`` and Lightning's ``Tuner``
run it: the lr grows geometrically from ``min_lr`` to ``max_lr`` over ``steps`` optimizer steps of the run's own
training step (its augmentations, mixup, precision, clipping, grad_accum and SAM included; no warmup, scheduler or
EMA), the loss is smoothed by a bias-corrected exponential moving average, and the test stops early when the smoothed
loss exceeds ``diverge`` times its minimum (or is not finite). Under torchrun every rank runs it on its share of the
global batch and the losses are averaged across ranks, so the curve is the global batch's.

Every optimizer parameter group keeps its share of the lr (layer decay, a loss optimizer): the lr a step uses is
what ``optimizer.lr`` would be. Suggestions (:func:`suggest`): *steepest descent* of the smoothed loss (Lightning's
rule, the default) and *minimum / 10* (fastai's older rule).

Nothing is written here, and the process's RNG states and torch's determinism switches are as they were afterwards;
the model and optimizer built for the test are discarded. Core names no library beyond torch.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import numpy as np

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import build, checkpoint
from plugtrain.core.runtime.distributed import DistEnv

#: Points left out at the start and the end of the curve by the steepest-descent rule (Lightning's defaults).
SKIP_BEGIN, SKIP_END = 10, 1


@attrs.define
class LRFindResult:
    """The range test's curve and suggestion (``lrs[i]`` is the ``optimizer.lr`` of step ``i``)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    rule: str
    min_over_10: float | None
    stopped: str  # "diverged at step N" or "reached max_lr"
    global_batch: int
    world_size: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class BatchSizeRow:
    batch_size: int
    fits: bool
    peak_bytes: int | None
    seconds: float | None
    error: str | None = None


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, str, float | None]:
    """``(suggested lr, the rule used, lr at the minimum / 10)``. Steepest descent: the lr where the smoothed loss
    falls fastest per step (``numpy.gradient``, the first 10 and the last point left out); with too few points, the
    minimum's lr / 10."""
    if not lrs:
        return None, "none: no step ran", None
    low = int(np.argmin(smoothed))
    min_over_10 = lrs[low] / 10
    if len(smoothed) >= SKIP_BEGIN + SKIP_END + 3:
        part = np.asarray(smoothed[SKIP_BEGIN:len(smoothed) - SKIP_END])
        i = int(np.gradient(part).argmin()) + SKIP_BEGIN
        return lrs[i], "steepest descent of the smoothed loss", min_over_10
    return min_over_10, "lr at the smoothed loss's minimum / 10 (too few steps for steepest descent)", min_over_10


def _ratios(optimizers: list[Any]) -> tuple[list[tuple[dict[str, Any], float]], float]:
    """Each parameter group with its lr as a share of the main optimizer's largest (the spec's ``optimizer.lr``)."""
    def lr0(g: dict[str, Any]) -> float:
        return float(g.get("initial_lr", g["lr"]))  # a scheduler may have moved "lr" already (OneCycleLR)

    ref = max(lr0(g) for g in optimizers[0].param_groups)
    if ref <= 0:
        raise PlugtrainError("[optimizer] the lr is 0: the range test scales it")
    return [(g, lr0(g) / ref) for opt in optimizers for g in opt.param_groups], ref


class _Batches:
    """The train loader's batches, epoch after epoch (the run's own order)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.epoch, self.it = trainer, 0, None

    def next(self) -> dict[str, Any]:
        while True:
            if self.it is None:
                self.trainer.sampler.set_epoch(self.epoch, 0)
                self.it = iter(self.trainer.train_loader)
            try:
                return next(self.it)
            except StopIteration:
                self.it, self.epoch = None, self.epoch + 1


class _Isolated:
    """Builds the run's trainer; afterwards the RNG states and torch's switches are as before and the loaders are
    shut down."""

    def __init__(self, spec: Any, dist: DistEnv) -> None:
        self.spec, self.dist = spec, dist

    def __enter__(self) -> Any:
        import torch

        from plugtrain.core.runtime.session import configure_torch
        from plugtrain.core.runtime.trainer import Trainer

        self.rng = checkpoint.rng_state(self.dist.device)
        self.flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        configure_torch(self.spec)
        self.trainer = None
        try:
            built = build.build_run(self.spec, self.dist)
            if self.spec.trainer.strategy == "fsdp" and self.dist.distributed:  # as a run shards it
                from plugtrain.core.runtime import fsdp

                fsdp.shard(built, self.dist)
            self.trainer = Trainer(built, self.dist)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.trainer

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.trainer is not None:
            self.trainer.close()
        checkpoint.set_rng_state(self.rng, self.dist.device)
        torch.use_deterministic_algorithms(self.flags[0], warn_only=self.flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.flags[2], self.flags[3]


def find_lr(spec: Any, dist: DistEnv, *, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100,
            smooth: float = 0.98, diverge: float = 4.0, progress: Any = None) -> LRFindResult:
    """The range test (see the module); ``progress(step, lr, smoothed loss)`` is called after each step."""
    from plugtrain.core.runtime.step import Warmup, batch_images

    if not (0 < min_lr < max_lr):
        raise PlugtrainError(f"lr-find: need 0 < --min-lr < --max-lr, got {min_lr:g} and {max_lr:g}")
    if steps < 2:
        raise PlugtrainError(f"lr-find: --steps must be >= 2, got {steps}")
    t0 = time.monotonic()
    with _Isolated(spec, dist) as trainer:
        step = trainer.step
        step.warmup, step.scheduler, step.ema = Warmup(0, 1.0), None, None  # the test sets the lr itself
        groups, _ = _ratios(trainer.optimizers)
        batches = _Batches(trainer)
        accum = spec.trainer.grad_accum
        lrs, losses, smoothed = [], [], []
        avg, best, stopped = 0.0, math.inf, "reached max_lr"
        from plugtrain.core.runtime.step import train_mode

        train_mode(step.net, trainer.backbone)
        for i in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            for g, share in groups:
                g["lr"] = lr * share
            micro = []
            for _ in range(accum):
                b = batches.next()
                micro.append(step.micro_batch(batch_images(b, "train"), b["targets"], bool(b["skipped"])))
            out = step.step(micro, i)
            total = sum(float(loss) * n for loss, n in out)
            count = sum(n for _, n in out)
            if dist.distributed:
                t = dist.all_reduce(dist.collective_tensor([total, float(count)]), op="sum")
                total, count = float(t[0].item()), float(t[1].item())
            loss = total / count if count else math.nan
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss):
                stopped = f"diverged at step {i + 1} (the loss is {loss})"
                lrs.pop()
                losses.pop()
                break
            avg = smooth * avg + (1 - smooth) * loss
            value = avg / (1 - smooth ** (i + 1))
            smoothed.append(value)
            if progress is not None:
                progress(i + 1, lr, value)
            if value > diverge * best:
                stopped = f"diverged at step {i + 1} (smoothed loss {value:.4g} > {diverge:g} x its minimum {best:.4g})"
                break
            best = min(best, value)
    suggestion, rule, min_over_10 = suggest(lrs, smoothed)
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion, rule=rule,
                        min_over_10=min_over_10, stopped=stopped, global_batch=spec.data.batch_size * dist.world_size,
                        world_size=dist.world_size, seconds=time.monotonic() - t0)


def _peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``getrusage``: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def find_batch_size(spec: Any, dist: DistEnv, *, start: int = 2, max_batch_size: int | None = None,
                    progress: Any = None) -> list[BatchSizeRow]:
    """One training step (forward, backward, optimizer step) at batch sizes ``start, 2 start, 4 start, ...`` per
    process, up to ``max_batch_size`` (default: the train split's size) or the first that does not fit the device's
    memory (CUDA: ``torch.OutOfMemoryError``; the peak allocated memory of each). On a CPU there is no device memory
    to run out of: each row holds the process's peak RSS after that step, a host-memory figure that only grows."""
    import torch

    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import Warmup, batch_images

    if start < 1:
        raise PlugtrainError(f"lr-find --batch-size: the first batch size must be >= 1, got {start}")
    rows: list[BatchSizeRow] = []
    with _Isolated(spec, dist) as trainer:
        step = trainer.step
        step.warmup, step.scheduler, step.ema = Warmup(0, 1.0), None, None
        data = trainer.built.train_data
        collate = Collate(spec.data.on_error, getattr(data, "task", None))  # the task collates its targets
        cap = max_batch_size or len(data)
        cuda = trainer.device.type == "cuda"
        bs = start
        while bs <= cap:
            batch = collate([data[(0, i % len(data))] for i in range(bs)])
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(trainer.device)
                t = time.monotonic()
                step.step([step.micro_batch(batch_images(batch, "train"), batch["targets"], False)], 0)
                if cuda:
                    torch.cuda.synchronize(trainer.device)
                seconds = time.monotonic() - t
                peak = torch.cuda.max_memory_allocated(trainer.device) if cuda else _peak_rss_bytes()
                rows.append(BatchSizeRow(bs, True, int(peak), seconds))
            except torch.OutOfMemoryError as exc:
                for opt in trainer.optimizers:
                    opt.zero_grad(set_to_none=True)
                rows.append(BatchSizeRow(bs, False, None, None, str(exc).split("\n", 1)[0][:200]))
                break
            if progress is not None:
                progress(rows[-1])
            bs *= 2
    return rows
