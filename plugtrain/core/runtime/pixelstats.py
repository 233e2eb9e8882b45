"""``augmentations.stats = "train"``: the per-channel mean and standard deviation of the training split's pixels.

Computed once over the raw decoded samples (before any augmentation), in units of the pixels divided by the scale,
over at most :data:`MAX_SAMPLES` samples spread evenly over the split; cached as JSON beside the runs
(``<run.output_dir>/.pixel-stats/<key>.json``, the key a hash of the data section, the channel count and the scale),
so that later runs and sweep trials on the same data read it instead. The values are written into the run's spec,
so its ``spec.toml`` records them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from plugtrain.core.atomic import write_atomic
from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError

#: At most this many samples are read (evenly spaced over the split).
MAX_SAMPLES = 4096
CACHE_DIR = ".pixel-stats"


def cache_key(spec: Any, in_chans: int, scale: float) -> str:
    """A hash of what the statistics depend on: the dataset and its parameters, the data options that choose the
    training samples, the channel count and the scale."""
    data = spec.data
    what = {"dataset": data.dataset.to_dict(), "fold": data.fold, "class_subset": data.class_subset,
            "seed": spec.run.seed, "in_chans": in_chans, "scale": scale, "max_samples": MAX_SAMPLES}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def train_stats(spec: Any, split: Any, in_chans: int, scale: float) -> tuple[list[float], list[float]]:
    """``(mean, std)`` per channel of ``split``'s images divided by ``scale``: read from the cache, else computed
    and cached (a cache that cannot be written is only a lost saving)."""
    path = Path(spec.run.output_dir).expanduser() / CACHE_DIR / f"{cache_key(spec, in_chans, scale)}.json"
    try:
        cached = json.loads(path.read_text())
        if len(cached["mean"]) == len(cached["std"]) == in_chans:
            return [float(m) for m in cached["mean"]], [float(s) for s in cached["std"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    mean, std, count = compute(split, in_chans, scale)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"mean": mean, "std": std, "samples": count, "scale": scale}) + "\n")
    except OSError:
        pass
    return mean, std


def compute(split: Any, in_chans: int, scale: float) -> tuple[list[float], list[float], int]:
    """Mean and standard deviation per channel (float64 sums) over up to :data:`MAX_SAMPLES` readable samples."""
    import numpy as np

    n = len(split)
    step = max(1, math.ceil(n / MAX_SAMPLES))
    total = np.zeros(in_chans, dtype=np.float64)
    squares = np.zeros(in_chans, dtype=np.float64)
    pixels = 0
    count = 0
    for i in range(0, n, step):
        try:
            image = np.asarray(split[i][0])
        except (SampleError, OSError):
            continue  # an unreadable sample: the run raises or skips it itself
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] != in_chans:
            raise PlugtrainError(f"[augmentations] stats = \"train\": sample {i} of the training split has "
                                 f"{image.shape[-1]} channel(s), not {in_chans}")
        values = image.reshape(-1, in_chans).astype(np.float64) / scale
        total += values.sum(axis=0)
        squares += (values * values).sum(axis=0)
        pixels += values.shape[0]
        count += 1
    if not count:
        raise PlugtrainError("[augmentations] stats = \"train\": no sample of the training split could be read")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
    if np.any(std <= 0):
        flat = [int(c) for c in np.flatnonzero(std <= 0)]
        raise PlugtrainError(f"[augmentations] stats = \"train\": channel(s) {flat} of the training split are "
                             "constant (standard deviation 0); give mean and std yourself")
    return [float(m) for m in mean], [float(s) for s in std], count
