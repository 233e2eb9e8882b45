"""A finished run directory, as ``evaluate`` and ``predict`` open it: its spec, a checkpoint, a one-process device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime import distributed, rundir
from plugtrain.core.spec import load_spec


def open_run(run_dir: str) -> tuple[Path, Any]:
    """``(RUN_DIR, its spec.toml loaded)``; a missing directory or spec is bad input."""
    root = Path(run_dir)
    spec_path = root / "spec.toml"
    if not root.is_dir():
        raise PlugtrainError(f"{run_dir}: no such run directory")
    if not spec_path.is_file():
        raise PlugtrainError(f"{run_dir}: not a run directory (no spec.toml)")
    return root, load_spec(spec_path)


def checkpoint_path(root: Path, which: str) -> Path:
    """``best`` / ``last`` -> ``RUN_DIR/checkpoints/<which>.pt`` (which must exist); anything else is a path."""
    if which in ("best", "last"):
        path = root / rundir.CHECKPOINTS / f"{which}.pt"
        if not path.is_file():
            have = sorted(p.name for p in (root / rundir.CHECKPOINTS).glob("*.pt"))
            raise PlugtrainError(f"{path}: no such checkpoint" + (f" (there are: {', '.join(have)})" if have else ""))
        return path
    return Path(which)


def local_env(spec: Any) -> distributed.DistEnv:
    """One process on the spec's device (never a process group)."""
    return distributed.DistEnv(device=distributed._pick_device(spec.trainer.device, 0))
