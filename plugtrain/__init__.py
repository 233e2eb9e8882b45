"""plugtrain: a PyTorch training framework in which every component is a plugin.

Plugin authors need only :data:`hookimpl` and :class:`Component`::

    from plugtrain import Component, hookimpl

Importing this package is cheap: torch, timm and albumentations load only when a component of their kind is used.
"""

from plugtrain.core.hookspecs import KINDS, hookimpl
from plugtrain.core.registry import Component

__version__ = "0.1.0"

__all__ = ["KINDS", "Component", "hookimpl", "__version__"]
