"""``plugtrain weights fetch SPEC... [--set K=V]``: fill the Hugging Face cache with every weight the specs name.

Run it where there is network (a login node), with the ``HF_HOME`` (or ``HF_HUB_CACHE``) that the training jobs
will use; the jobs then run with ``HF_HUB_OFFLINE=1`` and read the weights from the cache. The weights a spec names
are its ``[backbone] pretrained``: ``true`` (the model's default weights on the hub), ``"hf-hub:ORG/NAME"`` or
``"timm/NAME.TAG"``; a local file needs no fetching and is only reported.

One line per weight: ``cached`` (already there), ``fetched`` (downloaded now), or why it cannot be had; weights
whose ``config.json`` names another architecture than the spec's backbone are reported too (exit 2), as training
would refuse them. With
``HF_HUB_OFFLINE=1`` nothing is downloaded: the command then says which weights are cached and fails (exit 2) when
one is not, which makes it a check of the cache, too. The specs are validated first (every problem reported, exit 2,
nothing fetched).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError


def _is_timm(comp: Any) -> bool:
    """Whether ``comp`` is one of the built-in timm backbones (whose ``pretrained`` this command understands)."""
    import functools

    from plugtrain.plugins.backbones import timm_backbone

    return isinstance(comp.factory, functools.partial) and comp.factory.func is timm_backbone


def _refs(specs: Sequence[str], overrides: Sequence[str]) -> list[tuple[str, Any, str]]:
    """``(spec, WeightsRef, backbone name)`` for every spec that names weights, validated (cache look-ups off)."""
    from plugtrain.core.registry import get_registry
    from plugtrain.core.runtime.rundir import without_start_inputs
    from plugtrain.core.spec import SpecError, load_spec
    from plugtrain.plugins.backbones import weights_ref

    found, problems = [], []
    with without_start_inputs():  # this command looks the weights up itself
        for path in specs:
            try:
                spec = load_spec(path, list(overrides))
            except SpecError as exc:
                problems.extend(exc.problems)
                continue
            comp = get_registry().get("backbones", spec.backbone.name)
            name = comp.name
            if not _is_timm(comp):
                console.echo(f"{path}: backbone {name!r} comes from plugin {comp.plugin!r}, not timm: its weights "
                             "are not plugtrain's to fetch")
                continue
            ref = weights_ref(name, spec.backbone.params.get("pretrained"))
            if ref is None:
                console.echo(f"{path}: no pretrained weights (backbone {name!r} starts from scratch)")
                continue
            found.append((path, ref, name))
    if problems:
        raise SpecError(problems)
    return found


def fetch(specs: Sequence[str], overrides: Sequence[str] = ()) -> int:
    """Download (or, offline, look up) every hub weight the specs name; exit 2 when one cannot be had."""
    from plugtrain.plugins.backbones import (
        architecture_problem,
        cached_weights_file,
        download_weights,
        hub_cache_dir,
        hub_offline,
    )

    offline = hub_offline()
    failed: list[str] = []
    unfit: list[str] = []  # weights that are there but another architecture than the spec's backbone
    done: dict[Any, str] = {}
    refs = _refs(specs, overrides)
    for path, ref, name in refs:
        head = f"{path}: backbone {name!r} pretrained = {ref.label}"
        if not ref.hub:
            where = ref.path
            state = "a local file" if os.path.isfile(os.path.expanduser(where)) else "a local file that does not exist"
            console.echo(f"{head}: {state} (relative to the working directory), nothing to fetch")
            continue
        if ref not in done:
            cached = cached_weights_file(ref)
            if cached is not None:
                done[ref] = f"cached ({cached})"
            elif offline:
                failed.append(ref.label)
                done[ref] = "NOT cached, and HF_HUB_OFFLINE is set: nothing can be fetched here"
            else:
                try:
                    done[ref] = f"fetched ({download_weights(ref)})"
                except PlugtrainError as exc:
                    failed.append(ref.label)
                    done[ref] = f"cannot be fetched: {str(exc).removeprefix('backbone.pretrained: ')}"
        state = done[ref]
        wrong = architecture_problem(ref, name) if state.startswith(("cached", "fetched")) else None
        if wrong:  # the weights are there, and training would refuse them: say so now
            unfit.append(f"{path} ({wrong.split(': set ')[0]})")
            state += f", but {wrong}"
        console.echo(f"{head}: {state}")
    if failed:
        how = ("run `plugtrain weights fetch` without HF_HUB_OFFLINE where there is network, with the same HF_HOME"
               if offline else "see above")
        raise PlugtrainError(f"{len(failed)} weight{'s' if len(failed) != 1 else ''} not in the Hugging Face cache "
                             f"({hub_cache_dir()}): {', '.join(sorted(set(failed)))}; {how}")
    if unfit:
        many = len(unfit) != 1
        raise PlugtrainError(f"{len(unfit)} spec{'s name' if many else ' names'} weights of another architecture "
                             f"than {'their' if many else 'its'} backbone: {'; '.join(unfit)}; see above")
    if any(ref.hub for _, ref, _ in refs):
        console.echo(f"cache: {hub_cache_dir()} (training with HF_HUB_OFFLINE=1 reads the weights from here)")
    return 0


def run(action: str, specs: Sequence[str], overrides: Sequence[str] = ()) -> int:
    if action == "fetch":
        return fetch(specs, overrides)
    raise PlugtrainError(f"unknown weights action {action!r}: use `plugtrain weights fetch SPEC...`")
