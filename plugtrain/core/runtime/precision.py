"""``trainer.precision`` -> the autocast dtype and context, in one place (training, evaluation, export)."""

from __future__ import annotations

import contextlib
from typing import Any


def autocast_dtype(precision: str) -> Any:
    """``torch.float16`` for ``"fp16"``, ``torch.bfloat16`` for ``"bf16"``, ``None`` for ``"fp32"``."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def autocast(device_type: str, precision: str) -> Any:
    """A ``torch.autocast`` context for ``precision`` on ``device_type`` (a null context for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    return torch.autocast(device_type=device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
