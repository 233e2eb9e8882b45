"""Framework overhead: a minimal hand-written PyTorch loop vs plugtrain driven by a spec, in the same process.

Both sides train the same model (initialised from the same seed) on the same synthetic 32x32 images with the same
optimizer (AdamW), loss (cross-entropy), batch size (64) and precision (fp32), on the CPU, for the same number of
steps, and validate once per epoch (loss and accuracy). The time of a whole run (epochs of steps + validation) is
divided by its number of steps. Model and data are built before the clock starts, on both sides.

Cases:
* ``memory`` -- uint8 images held in memory. Bare: one uint8 tensor, indexed with a shuffled permutation per batch
  and normalised per batch (what one writes for in-memory data). plugtrain: a dataset plugin holding the same
  arrays, the default ``augmentations.normalize`` (since 6c5ab1b: one normalisation per batch on the device, the
  samples stay uint8) and ``data.num_workers = 0`` (its DataLoader in the main process). This is the case where any per-sample cost of the
  framework shows.
* ``dataloader`` -- the same uint8 images through a ``torch.utils.data.DataLoader`` with 2 persistent workers on both
  sides (bare: a minimal Dataset normalising each sample with albumentations ``Normalize``, and the default collate;
  plugtrain: its sampler, dataset wrapper and collate, and the per-batch normalisation on the device).

plugtrain computes the same validation metric as the bare loop (``[[metrics]] accuracy``; the default set adds
top-5, macro F1 and a rendered confusion matrix, once per epoch). It runs through the public runtime API (``load_spec`` -> ``build_run`` -> ``Trainer.fit``) with its progress
output on (plain lines at log intervals, captured). Bare and plugtrain runs alternate; medians of ``--repeats``.
Goal: median step-time ratio <= 1.02.

``--profile CASE`` runs plugtrain on one case under cProfile and prints where the time goes.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from _common import alternate, build_trainer, finish, install_plugin, machine, main_args, quiet_fit, row, temp_dir

GOAL = 1.02
BATCH = 64
SIZE = 32
CLASSES = 10
LR, WD = 1e-3, 0.01
SEED = 0

MODELS = {"tiny-cnn": "bench-tiny-cnn", "resnet18": "resnet18"}
DATA_MODES = ("memory", "dataloader")


def spec_text(model: str, mode: str, n_train: int, n_val: int, epochs: int, workers: int, out: Path) -> str:
    nw = 0 if mode == "memory" else workers
    return f"""
[run]
name = "overhead"
output_dir = "{out}"
seed = {SEED}
epochs = {epochs}

[data]
dataset = "bench-tensors"
n_train = {n_train}
n_val = {n_val}
size = {SIZE}
channels = 3
num_classes = {CLASSES}
dtype = "uint8"
batch_size = {BATCH}
num_workers = {nw}

[backbone]
name = "{MODELS[model]}"

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = {LR}
weight_decay = {WD}

[augmentations]
normalize = true
resize = false

[[metrics]]
name = "accuracy"

[trainer]
precision = "fp32"
"""


# -- the bare loop -----------------------------------------------------------------------------------------------------
def make_model(model: str) -> Any:
    import torch

    torch.manual_seed(SEED)  # as build_run does: the same initial weights on both sides
    if model == "tiny-cnn":
        import _bench_plugin

        return _bench_plugin.tiny_cnn(num_classes=CLASSES, in_chans=3)
    import timm

    return timm.create_model(model, pretrained=False, num_classes=CLASSES, in_chans=3)


class BareDataset:
    """What one writes: decode nothing (in memory), albumentations Normalize, HWC -> CHW tensor."""

    def __init__(self, images: Any, targets: Any, transform: Any) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np
        import torch

        x = self.transform(image=self.images[i])["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.targets[i])


def bare_run(model_name: str, mode: str, n_train: int, n_val: int, epochs: int, workers: int) -> float:
    """Seconds per step of a minimal hand-written loop (train ``epochs``, validate after each)."""
    import _bench_plugin
    import torch
    import torch.nn.functional as F

    tr_x, tr_y = _bench_plugin.synthetic_arrays(n_train, SIZE, 3, CLASSES, 1234)
    va_x, va_y = _bench_plugin.synthetic_arrays(n_val, SIZE, 3, CLASSES, 1235)
    model = make_model(model_name)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    steps = n_train // BATCH
    if mode == "memory":
        X = torch.from_numpy(tr_x).permute(0, 3, 1, 2).contiguous()
        Y = torch.from_numpy(tr_y)
        VX = torch.from_numpy(va_x).permute(0, 3, 1, 2).contiguous()
        VY = torch.from_numpy(va_y)
        gen = torch.Generator().manual_seed(SEED)

        def train_batches():
            perm = torch.randperm(n_train, generator=gen)
            for b in range(steps):
                idx = perm[b * BATCH:(b + 1) * BATCH]
                yield (X[idx].float() / 255.0 - 0.5) / 0.5, Y[idx]

        def val_batches():
            for b in range(0, n_val, BATCH):
                yield (VX[b:b + BATCH].float() / 255.0 - 0.5) / 0.5, VY[b:b + BATCH]
    else:
        import albumentations as A

        tf = A.Compose([A.Normalize(mean=[0.5] * 3, std=[0.5] * 3, max_pixel_value=255.0)], seed=SEED)
        kw = dict(num_workers=workers, persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
        train_loader = torch.utils.data.DataLoader(BareDataset(tr_x, tr_y, tf), batch_size=BATCH, shuffle=True,
                                                   drop_last=True, **kw)
        val_loader = torch.utils.data.DataLoader(BareDataset(va_x, va_y, tf), batch_size=BATCH, **kw)

        def train_batches():
            return train_loader

        def val_batches():
            return val_loader

    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        loss_sum = torch.zeros(())
        for x, y in train_batches():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        model.eval()
        correct = torch.zeros((), dtype=torch.long)
        val_loss = torch.zeros(())
        with torch.no_grad():
            for x, y in val_batches():
                out = model(x)
                val_loss += F.cross_entropy(out, y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
        _metrics = (loss_sum.item() / steps, val_loss.item() / n_val, correct.item() / n_val)
    elapsed = time.perf_counter() - t0
    if mode != "memory":
        del train_loader, val_loader  # persistent workers end with their loader
    return elapsed / (epochs * steps)


# -- plugtrain ---------------------------------------------------------------------------------------------------------
def plugtrain_run(spec_path: Path, epochs: int, n_train: int) -> float:
    """Seconds per step of ``Trainer.fit()`` (built before the clock starts)."""
    trainer = build_trainer(spec_path)
    try:
        t0 = time.perf_counter()
        quiet_fit(trainer)
        elapsed = time.perf_counter() - t0
    finally:
        trainer.close()
    steps = epochs * (n_train // BATCH)
    if trainer.global_step != steps:
        raise RuntimeError(f"plugtrain ran {trainer.global_step} steps, the bare loop {steps}")
    return elapsed / steps


def profile(spec_path: Path, top: int) -> None:
    trainer = build_trainer(spec_path)
    prof = cProfile.Profile()
    try:
        prof.enable()
        quiet_fit(trainer)
        prof.disable()
    finally:
        trainer.close()
    stats = pstats.Stats(prof, stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    def extra(p):
        p.add_argument("--only", default="", help="run only cases whose name contains this (e.g. resnet18)")
        p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the dataloader cases")
        p.add_argument("--profile", metavar="CASE", help="profile plugtrain on CASE (e.g. tiny-cnn/memory)")

    args = main_args(__doc__, extra)
    if args.quick:
        n_train, n_val, epochs, repeats = 2 * BATCH, BATCH, 1, 1
    else:
        n_train, n_val, epochs, repeats = 32 * BATCH, 4 * BATCH, 2, args.repeats
    import torch  # noqa: F401 - so that machine() reports torch's threads

    print(f"overhead: {machine()}; {n_train // BATCH} steps x {epochs} epoch(s), batch {BATCH}, {SIZE}x{SIZE}, "
          f"{repeats} repeat(s)", flush=True)
    rows = []
    with temp_dir("plugtrain-bench-overhead-") as tmp:
        install_plugin(tmp / "plugin")
        for model in MODELS:
            for mode in DATA_MODES:
                case = f"{model}/{mode}"
                if args.only not in case and not (args.profile and args.profile == case):
                    continue
                spec = tmp / f"{model}-{mode}.toml"
                spec.write_text(spec_text(model, mode, n_train, n_val, epochs, args.workers, tmp / "runs"))
                if args.profile:
                    if args.profile == case:
                        profile(spec, 30)
                    continue

                def bare(model=model, mode=mode):
                    return bare_run(model, mode, n_train, n_val, epochs, args.workers)

                def ours(spec=spec):
                    return plugtrain_run(spec, epochs, n_train)

                if not args.quick:
                    bare(), ours()  # warm-up: lazy imports, allocator, first-call costs on both sides
                b, p = alternate(bare, ours, repeats)
                label = f"{case} ({'in-memory tensors' if mode == 'memory' else f'{args.workers} workers'})"
                rows.append(row("overhead", label, b * 1e3, p * 1e3, "ms/step", GOAL))
                print(f"  {label}: bare {b * 1e3:.2f} ms/step, plugtrain {p * 1e3:.2f} ms/step, "
                      f"ratio {p / b:.3f}", flush=True)
    if rows:
        finish(rows, args)


if __name__ == "__main__":
    main()
