"""plugtrain: a PyTorch training framework in which every component is a plugin.

Plugin authors need only :data:`hookimpl` and :class:`Component` (and :class:`Command` to add a CLI subcommand)::

    from plugtrain import Component, hookimpl

The Python API (:mod:`plugtrain.api`): ``plugtrain.train``, ``plugtrain.check``, ``plugtrain.load_run`` and their
``Result`` / ``LoadedRun``, imported on first use; its errors are ``plugtrain.PlugtrainError`` (``TrainingFailed`` for a
run that failed while training).

Importing this package is cheap: torch, timm and albumentations load only when a component of their kind is used,
and the API module only when one of its names is.
"""

from plugtrain.core.errors import PlugtrainError, TrainingFailed
from plugtrain.core.hookspecs import KINDS, hookimpl
from plugtrain.core.registry import Command, Component

__version__ = "0.1.0"

_API = ("LoadedRun", "Result", "check", "load_run", "train")

__all__ = ["KINDS", "Command", "Component", "PlugtrainError", "TrainingFailed", "hookimpl", "__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from plugtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'plugtrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
