"""Loading weights and checkpoints safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with a clear error for a missing file or a pickled object."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise PlugtrainError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PlugtrainError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors and plain types, and "
            f"plugtrain loads with torch.load(weights_only=True) so that a file cannot run code. "
            f"({str(exc).strip().splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise PlugtrainError(f"{path}: not a readable torch file: {str(exc).strip().splitlines()[0][:200]}") from None


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a weights-only torch file (``{"model": sd}`` is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise PlugtrainError(f"weights file {str(path)!r} does not exist (pretrained weights must be a local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise PlugtrainError(f"{path}: not a readable safetensors file: {exc}") from None
    sd = safe_torch_load(path)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise PlugtrainError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    return sd


def load_weights(model: Any, path: str, strict: bool = True, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local weights file into ``model``; a clear error lists missing, unexpected and mismatched keys."""
    sd = load_state_dict_file(path)
    own = model.state_dict()
    mismatched = [k for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    skip = set(mismatched) if not strict else set()
    sd = {k: v for k, v in sd.items() if k not in skip and not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in sd and not k.startswith(ignore_prefixes)]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected or mismatched):
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if mismatched:
            parts.append(
                "shape mismatch: "
                + few([f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched])
            )
        raise PlugtrainError(f"weights file {path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
