"""A Hugging Face Hub cache on disk, made from a locally saved timm model: no network, real huggingface_hub code.

``hub_cache(hf_home, "ORG/NAME", model)`` saves ``model`` with timm's own ``save_for_hf`` (``config.json`` +
``model.safetensors``, what a timm repository on the hub holds) and lays it out as huggingface_hub's cache does::

    <hf_home>/hub/models--ORG--NAME/blobs/<sha256>            the files' content
    <hf_home>/hub/models--ORG--NAME/snapshots/<commit>/NAME   symlinks to the blobs
    <hf_home>/hub/models--ORG--NAME/refs/main                 the commit that ``main`` points at

With ``HF_HOME=<hf_home>`` and ``HF_HUB_OFFLINE=1``, ``hf_hub_download`` and ``try_to_load_from_cache`` find the
files exactly as they would after a real download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

#: A fixed 40-hex commit id for the snapshot (any commit id works; main points at it).
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(hf_home: Path, repo: str, model: Any, commit: str = COMMIT) -> Path:
    """Put ``model`` (a timm model) into the hub cache under ``hf_home`` as repository ``repo``; returns the
    snapshot folder (its ``model.safetensors`` holds exactly ``model.state_dict()``)."""
    import tempfile

    from timm.models import save_for_hf

    storage = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    blobs = storage / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hf(model, tmp, safe_serialization=True)  # config.json + model.safetensors, as timm pushes them
        for name in sorted(os.listdir(tmp)):
            data = (Path(tmp) / name).read_bytes()
            blob = blobs / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / name
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def perturbed_model(name: str, seed: int = 7, **kwargs: Any) -> Any:
    """A timm model whose every floating tensor is moved away from its initialisation (so that loaded weights are
    told apart from fresh ones)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
    return model
