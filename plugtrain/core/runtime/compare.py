"""Whether one metric value is better than another, for ``run.mode`` (best.pt, top-k, early stopping)."""

from __future__ import annotations

import math


def is_better(value: float | None, than: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """``value`` beats ``than`` by more than ``min_delta`` in direction ``mode`` (``"max"`` or ``"min"``).

    A non-finite or missing ``value`` never wins; anything finite beats a missing or non-finite ``than``."""
    if value is None or not math.isfinite(value):
        return False
    if than is None or not math.isfinite(than):
        return True
    return value > than + min_delta if mode == "max" else value < than - min_delta
