"""The runtime: a run spec becomes a training run (single process or DDP under torchrun), an evaluation or predictions.

* :func:`train_command` — ``plugtrain train SPEC... [--resume auto|PATH] [--overwrite] [--dry-run]``
* :func:`evaluate_command` — ``plugtrain evaluate RUN_DIR [--checkpoint best|last|PATH] [--split val|test]``
* :func:`predict_command` — ``plugtrain predict RUN_DIR IMAGE... [--top-k K]``

Modules: :mod:`.build` (spec -> objects through the registry), :mod:`.trainer` (the loop), :mod:`.checkpoint`,
:mod:`.distributed`, :mod:`.rundir`, :mod:`.loader` (sampler, dataset wrapper, collate), :mod:`.progress`,
:mod:`.api` (the commands). Importing this package is cheap: torch loads when a command runs.
"""

from __future__ import annotations

from typing import Any


def train_command(paths: list[str], overrides: list[str] | None = None, **options: Any) -> int:
    from plugtrain.core.runtime.api import train_command as run

    return run(paths, overrides or [], **options)


def evaluate_command(run_dir: str, checkpoint: str = "best", split: str = "val", as_json: bool = False) -> int:
    from plugtrain.core.runtime.api import evaluate_command as run

    return run(run_dir, checkpoint, split, as_json)


def predict_command(run_dir: str, images: list[str], checkpoint: str = "best", top_k: int = 5,
                    as_json: bool = False) -> int:
    from plugtrain.core.runtime.api import predict_command as run

    return run(run_dir, images, checkpoint, top_k, as_json)


__all__ = ["evaluate_command", "predict_command", "train_command"]
