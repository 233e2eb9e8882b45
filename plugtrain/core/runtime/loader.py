"""Data loading: a resumable batch sampler, the torch Dataset that augments in workers, and the collate function.

Every random choice of an epoch is a pure function of ``(seed, epoch, sample index)``:

* :class:`GlobalBatchSampler` shuffles the indices of epoch ``e`` with a generator seeded from ``(seed, e)``, cuts the
  order into *global* batches of ``batch_size * world_size`` and gives rank ``r`` the ``r``-th slice of each. The
  union of the ranks' batches is the batch one process with the whole global batch would see, so a 2-process run
  matches a 1-process run with the doubled batch. Starting at batch ``k`` of an epoch (mid-epoch resume) just skips
  the first ``k`` batches of the same order.
* The sampler yields ``(epoch, index)`` keys and :class:`AugmentedDataset` sets the state of the albumentations
  pipeline's generators from ``(seed, epoch, index, view)`` before each sample, so a sample's augmentation does not
  depend on which worker draws it, on how many workers there are, or on whether the run was interrupted.

Samples leave the dataset as raw pixel values (``uint8`` CHW tensors, or float where a transform made them float):
normalisation is one tensor operation per batch on the device (:class:`plugtrain.core.runtime.trainer.ModelInput`).

So resuming needs only the epoch and the batch position, never the state of a worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from plugtrain.core.data import SampleError

_MASK64 = (1 << 64) - 1
_PCG_INC = 0x194A2C8E6D1F0B3A5C7E9D2F4B6A8C1F  # the (odd) stream increment of the per-sample PCG64 states


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts): stable across processes and Python versions."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


class GlobalBatchSampler:
    """This rank's batches of ``(epoch, index)`` keys; see the module docstring.

    ``order`` (optional) returns the epoch's index order from a seeded ``numpy.random.Generator`` (the m-per-class
    sampler); the default is a permutation. ``drop_last`` drops an incomplete last global batch; otherwise it is
    padded with indices from the start of the order up to a multiple of ``world_size`` and split evenly.
    ``max_batches`` cuts every epoch short (``trainer.max_steps_per_epoch``).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        max_batches: int | None = None,
        order: Callable[[np.random.Generator], Sequence[int]] | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.order = order
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def batches_per_epoch(self) -> int:
        n = self._order_length()
        full = n // self.global_batch if self.drop_last else -(-n // self.global_batch)
        return full if self.max_batches is None else min(full, self.max_batches)

    def _order_length(self) -> int:
        if self.order is None:
            return self.num_samples
        return len(self.epoch_order(0))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch to draw next, and how many of its batches were already consumed (mid-epoch resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng(mix_seed(self.seed, epoch, 0x5A3D))
        if self.order is not None:
            return [int(i) for i in self.order(rng)]
        if not self.shuffle:
            return list(range(self.num_samples))
        return rng.permutation(self.num_samples).tolist()

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.epoch_order(self.epoch)
        gb, w, r, e = self.global_batch, self.world_size, self.rank, self.epoch
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = order[b * gb:(b + 1) * gb]
            if len(chunk) < gb:  # the last, incomplete global batch (drop_last = false)
                pad = (-len(chunk)) % w
                chunk = chunk + order[:pad]
                per = len(chunk) // w
            else:
                per = self.batch_size
            yield [(e, i) for i in chunk[r * per:(r + 1) * per]]


class ShardedBatchSampler:
    """Evaluation batches: rank ``r`` takes indices ``r, r + world, ...`` in order, no padding, no shuffling."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in range(len(self)):
            yield [(0, i) for i in self.indices[b * self.batch_size:(b + 1) * self.batch_size]]


def m_per_class_order(targets: Sequence[int], m: int) -> Callable[[np.random.Generator], list[int]]:
    """An epoch order made of chunks of ``m`` samples of one class, chunks shuffled (metric learning batches)."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    classes = sorted(by_class)

    def order(rng: np.random.Generator) -> list[int]:
        chunks = []
        for c in classes:
            idx = by_class[c]
            perm = [idx[j] for j in rng.permutation(len(idx))]
            if len(perm) < m:  # a small class: repeat to fill one chunk
                perm = [perm[j % len(perm)] for j in range(m)]
            chunks += [perm[k:k + m] for k in range(0, len(perm) - m + 1, m)]
        return [i for j in rng.permutation(len(chunks)) for i in chunks[j]]

    return order


def class_counts(targets: Sequence[int], num_classes: int) -> list[int]:
    """How many samples of each class ``0 .. num_classes - 1`` the targets hold."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)
    return [int(c) for c in counts[:num_classes]]


def weighted_order(targets: Sequence[int], class_weights: Sequence[float] | None = None,
                   num_classes: int | None = None) -> Callable[[np.random.Generator], list[int]]:
    """An epoch order of ``len(targets)`` indices drawn with replacement, each class as often as its share of
    ``class_weights`` (default: all equal, so every class equally often; the ``weighted`` sampler): sample ``i`` of
    class ``c`` has probability proportional to ``class_weights[c] / count[c]``.

    Like every order here it is a function of the epoch's generator only, so it is the same on every rank and after a
    resume (:class:`GlobalBatchSampler` slices it into this rank's share and skips the batches already consumed).
    """
    t = np.asarray(targets, dtype=np.int64)
    n_cls = num_classes or int(t.max()) + 1
    counts = np.bincount(t, minlength=n_cls).astype(np.float64)
    share = np.ones(n_cls) if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    w_cls = np.where(counts > 0, share / np.maximum(counts, 1.0), 0.0)
    p = w_cls[t]
    p = p / p.sum()
    n = len(t)

    def order(rng: np.random.Generator) -> list[int]:
        return rng.choice(n, size=n, replace=True, p=p).tolist()

    return order


class Failed:
    """A sample that could not be produced: returned by the dataset so that the main process reports it."""

    __slots__ = ("path", "reason", "skippable")

    def __init__(self, path: str, reason: str, skippable: bool) -> None:
        self.path, self.reason, self.skippable = path, reason, skippable


class AugmentedDataset:
    """A torch map-style dataset over a split: decode (the split's ``__getitem__``), augment, to a CHW tensor.

    Keys are ``(epoch, index)``. ``transform`` is an albumentations-compatible callable, or ``None`` (nothing to do).
    The first time a process augments, the dataset attaches one numpy ``Generator`` (PCG64) and one ``random.Random``
    of its own to the pipeline with ``set_random_state`` (albumentations 2.x keeps them by reference, in nested
    compositions too); before each sample it only sets their state from ``(seed, epoch, index, view)``. A worker
    forked or spawned later has its own copies, so the augmentation stays a pure function of the key.
    ``to_tensor`` turns an HWC array into a CHW tensor of the same values (``uint8`` stays ``uint8``; any other
    dtype becomes ``float32``); without it the pipeline's output is returned as it is.
    A :class:`SampleError` becomes a :class:`Failed` marker, which the collate function skips or reports.
    ``spatial_dims``: the samples' spatial rank (2 images ``HxWxC``; 1 signals ``LxC``; 3 volumes ``DxHxWxC``): a
    sample without its channel axis gets one, and a signal or volume always leaves as a ``C x ...`` tensor.
    """

    def __init__(
        self,
        split: Sequence[Any],
        transform: Callable[..., dict[str, Any]] | None,
        seed: int,
        name: str = "train",
        num_views: int = 1,
        indices: Sequence[int] | None = None,
        label_map: dict[int, int] | None = None,
        to_tensor: bool = True,
        task: Any = None,
        spatial_dims: int = 2,
    ) -> None:
        self.split = split
        self.spatial_dims = spatial_dims
        self.transform = transform
        self.seed = seed
        self.name = name
        self.num_views = num_views
        self.indices = indices
        self.label_map = label_map
        self.to_tensor = to_tensor
        self.task = task
        self._seedable = transform is not None and hasattr(transform, "set_random_state")
        self._rngs: tuple[np.random.Generator, random.Random] | None = None  # made on first use, in each process

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.split)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        source = self.indices[index] if self.indices is not None else index
        try:
            image, target = self.split[source]
        except SampleError as exc:
            return Failed(exc.path, exc.reason, skippable=True)
        except Exception as exc:  # noqa: BLE001 - reported in the main process with the sample's index
            return Failed(f"{self.name} sample #{source}", f"{type(exc).__name__}: {exc}", skippable=False)
        if self.label_map is not None:
            relabel = getattr(self.task, "relabel", None)
            target = relabel(target, self.label_map) if callable(relabel) else self.label_map[int(target)]
        image = np.asarray(image)
        if image.ndim == self.spatial_dims:
            image = image[..., None]
        if self.num_views == 1:
            return self._augment(image, target, epoch, index, 0)
        views = [self._augment(image, target, epoch, index, v) for v in range(self.num_views)]
        return [v[0] for v in views], [v[1] for v in views]  # several views: each with its own target

    def _augment(self, image: np.ndarray, target: Any, epoch: int, index: int, view: int) -> tuple[Any, Any]:
        """One view of a sample: the image (and, where the task says so, the target) through the pipeline."""
        if self.transform is not None:
            if self._seedable:
                self._seed(mix_seed(self.seed, epoch, index, view))
            if self.task is not None:
                image, target = self.task.augment(self.transform, image, target)
            else:
                image = self.transform(image=image)["image"]
        if (self.to_tensor or self.spatial_dims != 2) and isinstance(image, np.ndarray):
            image = chw_tensor(image) if self.spatial_dims == 2 else channels_first_tensor(image)
        return image, target

    def _seed(self, s: int) -> None:
        """Put the pipeline's generators in the state that ``s`` names (a few microseconds; no new objects)."""
        if self._rngs is None:
            self._rngs = (np.random.Generator(np.random.PCG64()), random.Random())
        gen, py = self._rngs
        if getattr(self.transform, "random_generator", None) is not gen:  # first use, or another dataset shares it
            self.transform.set_random_state(gen, py)
        gen.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": s, "inc": _PCG_INC},
                                   "has_uint32": 0, "uinteger": 0}
        py.seed(s)


class Collate:
    """Stack a batch; drop :class:`Failed` samples when ``on_error = "skip"`` (counted), report the first otherwise.

    Returns a dict: ``images`` (``None`` when every sample was dropped), ``targets``, ``skipped`` (paths) and
    ``error`` (``None`` or ``(path, reason)``): the main process turns ``error`` into a message naming the file.
    """

    def __init__(self, on_error: str = "raise", task: Any = None) -> None:
        self.on_error = on_error
        self.collate_targets = task.collate if task is not None else _targets  # the task makes its targets' tensor

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        import torch

        good, skipped, error = [], [], None
        for item in items:
            if isinstance(item, Failed):
                if item.skippable and self.on_error == "skip":
                    skipped.append(item.path)
                elif error is None:
                    error = (item.path, item.reason)
            else:
                good.append(item)
        out: dict[str, Any] = {"images": None, "targets": None, "skipped": skipped, "error": error}
        if not good or error is not None:
            return out
        images = [g[0] for g in good]
        if isinstance(images[0], list):  # several views: view-major, each view's targets
            views = len(images[0])
            out["images"] = torch.cat([_stack([im[v] for im in images]) for v in range(views)])
            out["targets"] = torch.cat([self.collate_targets([g[1][v] for g in good]) for v in range(views)])
        else:
            out["images"] = _stack(images)
            out["targets"] = self.collate_targets([g[1] for g in good])
        return out


def _stack(images: list[Any]) -> Any:
    import torch

    images = [chw_tensor(im) if isinstance(im, np.ndarray) else im for im in images]  # HWC: no to-tensor step
    return torch.stack(images)  # uint8 with float samples mixed in: float32 (the model input normalises either)


def chw_tensor(image: np.ndarray) -> Any:
    """An HWC (or HW) array as a CHW tensor of the same values: ``uint8`` and ``float32`` kept, others ``float32``."""
    import torch

    a = np.ascontiguousarray(np.atleast_3d(image).transpose(2, 0, 1))
    if not a.flags.writeable:  # a read-only view of the split's memory (no transform, one channel)
        a = a.copy()
    x = torch.from_numpy(a)
    return x if x.dtype in (torch.uint8, torch.float32) else x.float()


def channels_first_tensor(sample: np.ndarray) -> Any:
    """A channels-last array of any spatial rank (``LxC``, ``DxHxWxC``) as a ``C x ...`` tensor of the same values
    (``uint8`` and ``float32`` kept, others ``float32``)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(sample, -1, 0)).copy())
    return x if x.dtype in (torch.uint8, torch.float32) else x.float()


def _targets(targets: list[Any]) -> Any:
    import torch

    first = targets[0]
    if isinstance(first, (bool, int, np.integer)):
        return torch.as_tensor(np.asarray(targets, dtype=np.int64))
    return torch.as_tensor(np.asarray(targets, dtype=np.float32))


def worker_init(seed: int) -> Callable[[int], None]:
    """Seeds python and numpy in each worker (for datasets that draw from the global generators)."""
    return _WorkerInit(seed)


class _WorkerInit:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        import signal

        # The main process handles SIGINT / SIGTERM (checkpoint at the next step); workers must not die first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        s = mix_seed(self.seed, worker_id, 0x77)
        random.seed(s)
        np.random.seed(s % (2**32))


def make_loader(
    dataset: AugmentedDataset,
    batch_sampler: Any,
    num_workers: int,
    on_error: str,
    seed: int,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    prefetch_factor: int = 2,
) -> Any:
    """A DataLoader with an explicit generator (so that creating its iterator never draws from torch's global RNG)."""
    import torch

    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            worker_init_fn=worker_init(seed),
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=Collate(on_error, getattr(dataset, "task", None)),
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(mix_seed(seed, 0x10AD) % (2**63)),
        **kwargs,
    )
