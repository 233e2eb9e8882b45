"""GPU: timm resnet50 at 224x224, bf16 autocast, channels_last, batch 256, synthetic data on the device: images/s of
plugtrain against a bare loop with the same settings; then both with ``torch.compile``; the model-FLOPs
utilisation (MFU); then a 2x larger batch (512) as 2 micro-batches of 256 with gradient accumulation.

Runs only where CUDA is available (it prints a line and exits 0 otherwise; ``run_all.py`` includes it with
``--gpu``). ``--cpu-smoke`` runs the same code on the CPU with resnet18 at 32x32, batch 8, to check the script.

Both sides get the same batches: a device-resident tensor of random images (channels_last) and random labels,
served ``n`` times by :class:`DeviceBatches`. plugtrain is built from a spec through the public runtime API
(``load_spec`` -> ``build_run`` -> ``Trainer``; dataset: the benchmark plugin's ``bench-zeros``, sized to the number
of batches) and its CPU DataLoader is replaced by the same device batches, so that both sides measure the training
step, not the host data pipeline. The clock starts after ``warmup`` batches (cudnn autotuning, compilation) with a
device synchronisation and stops, synchronised, after the last batch. Optimizer: SGD, momentum 0.9.

MFU = images/s x training FLOPs per image (forward + backward, counted by ``torch.utils.flop_counter`` on the
eager model) / the device's dense bf16 peak (H100 SXM / H200: 989 TFLOPS, H100 PCIe: 756, A100: 312; or
``--peak-tflops``). Goal: plugtrain / bare >= 0.98 images/s (1.02 in time).

During the timed batches ``torch.cuda.set_sync_debug_mode("warn")`` counts implicit device synchronisations
(``.item()``, ``.cpu()``, ...): the bare loop has none; plugtrain may have one per log interval
(``trainer.log_every_steps``, 50), never one per step.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

from _common import build_trainer, finish, install_plugin, machine, main_args, quiet_fit, row, temp_dir

GOAL = 0.98
SEED = 0
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0), ("A10", 125.0))


class DeviceBatches:
    """``n`` batches of one device-resident tensor pair; times batches ``warmup..n`` with device syncs."""

    def __init__(self, n: int, batch: int, size: int, classes: int, device: Any, warmup: int) -> None:
        import torch

        g = torch.Generator(device="cpu").manual_seed(SEED)
        self.images = torch.randn(batch, 3, size, size, generator=g).to(device, memory_format=torch.channels_last)
        self.targets = torch.randint(0, classes, (batch,), generator=g).to(device)
        self.n, self.batch, self.warmup, self.device = n, batch, warmup, device
        self.seconds = float("nan")
        self.syncs = 0

    def __len__(self) -> int:
        return self.n

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __iter__(self):
        import torch

        count = self.device.type == "cuda"  # implicit device syncs (.item(), .cpu(), ...) in the timed steps
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for i in range(self.n):
                    if i == self.warmup:
                        self._sync()
                        t0 = time.perf_counter()
                        if count:
                            torch.cuda.set_sync_debug_mode("warn")
                    yield {"images": self.images, "targets": self.targets, "skipped": [], "error": None}
            finally:
                if count:
                    torch.cuda.set_sync_debug_mode("default")
            self._sync()
            self.seconds = time.perf_counter() - t0
        self.syncs = sum("synchroniz" in str(w.message).lower() for w in caught)

    def pairs(self):
        for batch in self:
            yield batch["images"], batch["targets"]

    @property
    def images_per_s(self) -> float:
        return (self.n - self.warmup) * self.batch / self.seconds


def spec_text(cfg: dict[str, Any], out: Path) -> str:
    return f"""
[run]
name = "gpu"
output_dir = "{out}"
seed = {SEED}
epochs = 1

[data]
dataset = "bench-zeros"
n_train = {cfg["batch"] * cfg["batches"]}
n_val = 8
size = {cfg["size"]}
num_classes = {cfg["classes"]}
batch_size = {cfg["batch"]}
num_workers = 0

[backbone]
name = "{cfg["model"]}"

[loss]
name = "CrossEntropy"

[optimizer]
name = "SGD"
lr = 0.1
momentum = 0.9

[augmentations]
resize = false

[[metrics]]
name = "accuracy"

[trainer]
device = "{cfg["device"]}"
precision = "bf16"
channels_last = true
compile = {"true" if cfg["compile"] else "false"}
grad_accum = {cfg["accum"]}
"""


def bare_run(cfg: dict[str, Any]) -> tuple[float, int]:
    """``(images/s, implicit device syncs in the timed steps)`` of a hand-written loop with the same settings."""
    import timm
    import torch
    import torch.nn.functional as F

    device = torch.device(cfg["device"])
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(SEED)
    model = timm.create_model(cfg["model"], pretrained=False, num_classes=cfg["classes"])
    model = model.to(device, memory_format=torch.channels_last).train()
    forward = torch.compile(model) if cfg["compile"] else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = DeviceBatches(cfg["batches"], cfg["batch"], cfg["size"], cfg["classes"], device,
                            cfg["warmup"])
    accum = cfg["accum"]
    for i, (x, y) in enumerate(batches.pairs()):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(x).float(), y)
        (loss / accum if accum > 1 else loss).backward()
        if (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    del model, forward, opt
    return batches.images_per_s, batches.syncs


def plugtrain_run(cfg: dict[str, Any], spec: Path) -> tuple[float, int]:
    """``(images/s, implicit device syncs in the timed steps)`` of ``Trainer.fit()`` on the same batches."""
    import torch

    trainer = build_trainer(spec)
    batches = DeviceBatches(cfg["batches"], cfg["batch"], cfg["size"], cfg["classes"], torch.device(cfg["device"]),
                            cfg["warmup"])
    trainer.train_loader = batches  # the same device batches as the bare loop, instead of the CPU DataLoader
    try:
        quiet_fit(trainer)
    finally:
        trainer.close()
    if trainer.global_step != cfg["batches"] // cfg["accum"]:
        raise RuntimeError(f"plugtrain ran {trainer.global_step} optimizer steps, expected "
                           f"{cfg['batches'] // cfg['accum']}")
    return batches.images_per_s, batches.syncs


def train_flops_per_image(cfg: dict[str, Any]) -> float:
    """Forward + backward FLOPs of one image (torch's FLOP counter, eager model, batch 2)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(cfg["device"])
    model = timm.create_model(cfg["model"], pretrained=False, num_classes=cfg["classes"]).to(device)
    x = torch.randn(2, 3, cfg["size"], cfg["size"], device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        model(x).float().sum().backward()
    return counter.get_total_flops() / 2


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def cleanup() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    def extra(p):
        p.add_argument("--cpu-smoke", action="store_true", help="resnet18 32x32 batch 8 on the CPU (script check)")
        p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
        p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")

    args = main_args(__doc__, extra, repeats=3)
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu: no CUDA device here; skipped (use --cpu-smoke to check the script on the CPU)")
        finish([], args)
        return
    if args.cpu_smoke:
        base = dict(model="resnet18", size=32, batch=8, classes=10, device="cpu", warmup=1, batches=3)
        device_name = "cpu"
    else:
        warmup, timed = (3, 5) if args.quick else (15, 50)
        base = dict(model="resnet50", size=224, batch=256, classes=1000, device="cuda", warmup=warmup,
                    batches=warmup + timed)
        device_name = torch.cuda.get_device_name(0)
    repeats = 1 if (args.quick or args.cpu_smoke) else args.repeats
    compile_ok = not args.no_compile and not args.cpu_smoke
    cases = [("eager", dict(base, compile=False, accum=1))]
    if compile_ok:
        cases.append(("compile", dict(base, compile=True, accum=1, warmup=base["warmup"] + 5,
                                      batches=base["batches"] + 5)))
    acc = dict(base, compile=False, accum=2, warmup=2 * base["warmup"], batches=2 * base["batches"])
    cases.append((f"batch {2 * base['batch']} = 2 x {base['batch']} accumulated", acc))
    print(f"gpu: {device_name}; {machine()}; {base['model']} {base['size']}x{base['size']} bf16 channels_last, "
          f"{repeats} repeat(s)", flush=True)

    flops = train_flops_per_image(base)
    peak = peak_flops(device_name, args.peak_tflops)
    print(f"  training FLOPs per image: {flops / 1e9:.2f} GFLOP; peak {peak / 1e12 if peak else float('nan'):.0f} "
          "TFLOPS bf16", flush=True)
    rows = []
    with temp_dir("plugtrain-bench-gpu-") as tmp:
        install_plugin(tmp / "plugin")
        for name, cfg in cases:
            spec = tmp / f"{len(rows)}.toml"
            spec.write_text(spec_text(cfg, tmp / "runs"))
            b_all, p_all, syncs = [], [], {"bare": 0, "plugtrain": 0}
            for i in range(repeats):
                order = ("bare", "plugtrain") if i % 2 == 0 else ("plugtrain", "bare")
                for side in order:
                    value, n_syncs = bare_run(cfg) if side == "bare" else plugtrain_run(cfg, spec)
                    (b_all if side == "bare" else p_all).append(value)
                    syncs[side] = max(syncs[side], n_syncs)
                    cleanup()
            b, p = statistics.median(b_all), statistics.median(p_all)
            label = f"{base['model']} {name}"
            timed = cfg["batches"] - cfg["warmup"]
            note = (f"implicit device syncs in {timed} timed batches: bare {syncs['bare']}, plugtrain "
                    f"{syncs['plugtrain']} (log interval: trainer.log_every_steps = 50)") if base["device"] == "cuda" else ""
            rows.append(row("gpu", f"{label}, img/s", b, p, "img/s", GOAL, better="higher", note=note))
            if peak:
                rows.append(row("gpu", f"{label}, MFU", 100 * b * flops / peak, 100 * p * flops / peak, "%", None))
            print(f"  {label}: bare {b:.0f} img/s, plugtrain {p:.0f} img/s, ratio {p / b:.3f}; device syncs in the "
                  f"timed batches: bare {syncs['bare']}, plugtrain {syncs['plugtrain']}", flush=True)
    finish(rows, args)


if __name__ == "__main__":
    main()
