"""Data loading: images/s of plugtrain's dataset + albumentations pipeline through its DataLoader, against the same
albumentations ``Compose`` outside plugtrain.

An imagefolder of PNGs (64x64 RGB, 10 classes) is written to a temporary directory. plugtrain reads it with the
``imagefolder`` dataset and a train pipeline (HorizontalFlip, Affine, then the Resize to 32 and Normalize that the
runtime appends), through the Trainer's own loader (its sampler, per-sample seeding, collate; persistent workers,
prefetching). The references use the very ``Compose`` object the runtime built from the spec:

* ``bare loop, decoded images`` -- the issue's reference: the images decoded once into memory, then a plain loop
  calls the Compose on each, turns it into a CHW tensor and stacks batches (one process, no decoding).
* ``bare DataLoader`` -- a minimal ``Dataset`` (PIL decode, Compose, to tensor) and the default collate in a
  ``torch.utils.data.DataLoader`` with the same workers, prefetching and batch size: the framework's own cost.

Two more rows measure the data-at-scale paths on the same PNGs:

* ``cache (memory), epoch 2+`` -- the same spec with ``data.cache = "memory"``: one epoch fills the cache (not
  timed), then every timed epoch reads decoded pixels from it; against the ``bare loop, decoded images`` reference.
  Once with the spec's workers, once with ``num_workers = 0`` (plugtrain in one process like the reference: the
  per-sample cost, which other load on the machine's cores does not skew).
* ``webdataset vs imagefolder`` -- the folder written to shards by ``plugtrain shards`` (the spec's own splits,
  so the same train images), read by the ``webdataset`` dataset; the reference is plugtrain's ``imagefolder`` path.

Each number is one epoch in steady state (workers already started); the sides alternate; medians of ``--repeats``.
Goal: plugtrain / reference >= 0.95 (images/s). ``--only`` runs some rows (``decoded,dataloader,cache,webdataset``).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

from _common import alternate, build_trainer, finish, machine, main_args, row, temp_dir

GOAL = 0.95
BATCH = 64
SOURCE_SIZE = 64
IMAGE_SIZE = 32
CLASSES = 10


def write_imagefolder(root: Path, n: int, size: int = SOURCE_SIZE, classes: int = CLASSES, seed: int = 0) -> Path:
    """``n`` PNGs in ``root/<class>/``: smooth random colour blobs plus noise (so that PNG has some work to do)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        fx, fy, phase = rng.uniform(1, 6, size=3)
        base = np.stack([np.sin(2 * np.pi * (fx * xx + phase + k / 3)) * np.cos(2 * np.pi * fy * yy)
                         for k in range(3)], axis=-1)
        img = (127.5 + 100 * base + rng.normal(0, 12, size=base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"class{c:02d}" / f"{i:06d}.png")
    return root


def spec_text(root: Path, workers: int, out: Path, decoder: str = "pil", data: str | None = None) -> str:
    data = data or f'dataset = "imagefolder"\nroot = "{root}"\ndecoder = "{decoder}"\nval_fraction = 0.1'
    return f"""
[run]
name = "dataloader"
output_dir = "{out}"
seed = 0
epochs = 1

[data]
{data}
image_size = {IMAGE_SIZE}
batch_size = {BATCH}
num_workers = {workers}

[backbone]
name = "resnet18"

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"

[augmentations]
train = [
  {{ name = "HorizontalFlip", p = 0.5 }},
  {{ name = "Affine", translate_percent = [-0.1, 0.1], rotate = [-15, 15], scale = [0.9, 1.1], p = 0.7 }},
]
"""


def to_tensor(image: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def decode(path: str) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class BareDataset:
    """What one writes: decode with PIL, the Compose, HWC -> CHW tensor."""

    def __init__(self, paths: list[str], targets: list[int], transform: Any) -> None:
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return to_tensor(self.transform(image=decode(self.paths[i]))["image"]), self.targets[i]


def main() -> None:
    def extra(p):
        p.add_argument("--workers", type=int, default=2, help="DataLoader workers (both DataLoaders)")
        p.add_argument("--images", type=int, default=2048, help="images in the folder (train gets 90%%)")
        p.add_argument("--decoder", choices=("pil", "cv2"), default="pil",
                       help="plugtrain's imagefolder decoder (the references decode with PIL)")
        p.add_argument("--only", default="decoded,dataloader,cache,webdataset",
                       help="rows to run, comma-separated: decoded, dataloader, cache, webdataset (default: all)")

    args = main_args(__doc__, extra)
    n_images, repeats = (192, 1) if args.quick else (args.images, args.repeats)
    import numpy as np
    import torch

    print(f"dataloader: {machine()}; {n_images} PNGs {SOURCE_SIZE}x{SOURCE_SIZE} -> {IMAGE_SIZE}, batch {BATCH}, "
          f"{args.workers} workers, {repeats} repeat(s), decoder {args.decoder}", flush=True)
    with temp_dir("plugtrain-bench-dataloader-") as tmp:
        t0 = time.perf_counter()
        root = write_imagefolder(tmp / "images", n_images)
        print(f"  wrote {n_images} PNGs in {time.perf_counter() - t0:.1f} s", flush=True)
        spec = tmp / "spec.toml"
        spec.write_text(spec_text(root, args.workers, tmp / "runs", args.decoder))
        trainer = build_trainer(spec, progress=False)
        split = trainer.built.splits.train
        paths, targets = list(split.paths), [int(t) for t in split.targets]
        transform = trainer.built.train_transform  # the very Compose plugtrain applies
        n = len(paths) // BATCH * BATCH  # full batches only, as the train loader (drop_last)

        epoch = [0]

        def epoch_of(tr: Any) -> Any:
            def one_epoch() -> float:
                tr.sampler.set_epoch(epoch[0], 0)
                epoch[0] += 1
                count = 0
                t = time.perf_counter()
                for batch in tr.train_loader:
                    count += batch["images"].shape[0]
                return count / (time.perf_counter() - t)
            return one_epoch

        plugtrain_epoch = epoch_of(trainer)

        bare_loader = torch.utils.data.DataLoader(
            BareDataset(paths, targets, transform), batch_size=BATCH, shuffle=True, drop_last=True,
            num_workers=args.workers, persistent_workers=args.workers > 0,
            prefetch_factor=2 if args.workers else None)

        def bare_loader_epoch() -> float:
            count = 0
            t = time.perf_counter()
            for images, _ in bare_loader:
                count += images.shape[0]
            return count / (time.perf_counter() - t)

        decoded = [decode(p) for p in paths]
        rng = np.random.default_rng(0)

        def bare_loop_epoch() -> float:
            order = rng.permutation(len(decoded))[:n]
            t = time.perf_counter()
            count = 0
            for b in range(0, n, BATCH):
                images = torch.stack([to_tensor(transform(image=decoded[i])["image"]) for i in order[b:b + BATCH]])
                torch.as_tensor([targets[i] for i in order[b:b + BATCH]])
                count += images.shape[0]
            return count / (time.perf_counter() - t)

        only = {x.strip() for x in args.only.split(",") if x.strip()}
        extra_trainers: list[Any] = []
        rows = []

        def measure(case: str, ref: Any, cand: Any, what: str) -> None:
            b, p = alternate(ref, cand, repeats)
            rows.append(row("dataloader", case, b, p, "img/s", GOAL, better="higher"))
            print(f"  {case}: {what} {b:.0f} img/s, plugtrain {p:.0f} img/s, ratio {p / b:.3f}", flush=True)

        try:
            plugtrain_epoch(), bare_loader_epoch(), bare_loop_epoch()  # warm-up: workers started, caches warm
            for key, label, ref in (("decoded", "bare loop, decoded images (1 process)", bare_loop_epoch),
                                    ("dataloader", f"bare DataLoader ({args.workers} workers)", bare_loader_epoch)):
                if key in only:
                    measure(f"img/s vs {label}", ref, plugtrain_epoch, "bare")
            if "cache" in only:
                cached = build_trainer(spec, ['data.cache="memory"'], progress=False)
                extra_trainers.append(cached)
                cached_epoch = epoch_of(cached)
                t = time.perf_counter()
                fill = cached_epoch()  # epoch 1: decodes and fills the cache (not timed in the row)
                print(f"  cache (memory), epoch 1 (fills it): {fill:.0f} img/s, {time.perf_counter() - t:.1f} s",
                      flush=True)
                measure("cache (memory), epoch 2+, vs bare loop, decoded", bare_loop_epoch, cached_epoch, "bare")
                # the same in one process (0 workers): the per-sample cost, whatever the other load on the cores
                cached0 = build_trainer(spec, ['data.cache="memory"', "data.num_workers=0"], progress=False)
                extra_trainers.append(cached0)
                cached0_epoch = epoch_of(cached0)
                cached0_epoch()
                measure("cache, epoch 2+, 0 workers, vs bare loop", bare_loop_epoch, cached0_epoch, "bare")
            if "webdataset" in only:
                from plugtrain.commands import shards as shards_command

                with contextlib.redirect_stdout(io.StringIO()):
                    shards_command.run(str(spec), out=str(tmp / "shards"), shard_size=256)
                wspec = tmp / "spec-webdataset.toml"
                wspec.write_text(spec_text(root, args.workers, tmp / "runs", args.decoder,
                                           data=f'dataset = "webdataset"\nshards = "{tmp / "shards"}"'))
                wds_trainer = build_trainer(wspec, progress=False)
                extra_trainers.append(wds_trainer)
                wds_epoch = epoch_of(wds_trainer)
                wds_epoch()  # warm-up
                measure(f"webdataset vs imagefolder ({args.workers} workers)", plugtrain_epoch, wds_epoch,
                        "imagefolder")
        finally:
            trainer.close()
            for t in extra_trainers:
                t.close()
    finish(rows, args)


if __name__ == "__main__":
    main()
