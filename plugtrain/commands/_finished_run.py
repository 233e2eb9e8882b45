"""What ``evaluate`` and ``export`` share beyond :mod:`plugtrain.inference` (where a finished run is opened, its
checkpoint and weights chosen and loaded): the run rebuilt for evaluation, its data and metrics included."""

from __future__ import annotations

from typing import Any

from plugtrain.inference import rebuilt_backbone


def build_for_eval(spec: Any, env: Any) -> Any:
    """``build_run(spec, env, purpose="eval")`` of a finished run's spec, its backbone without its start weights
    (:func:`~plugtrain.inference.rebuilt_backbone`): the data, model and metrics that evaluate and export run the
    checkpoint through."""
    import attrs

    from plugtrain.core.runtime import build

    return build.build_run(attrs.evolve(spec, backbone=rebuilt_backbone(spec)), env, purpose="eval")
