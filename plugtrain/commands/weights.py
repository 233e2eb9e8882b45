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

What a backbone needs is its plugin's to say (``PLUGTRAIN_FETCH``, :mod:`plugtrain.hub`): this command names no
plugin, and a backbone whose plugin declares nothing is reported and left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError


def _needs(specs: Sequence[str], overrides: Sequence[str]) -> list[tuple[str, str, Any]]:
    """``(spec, backbone name, HubFiles | LocalFile)`` for everything the specs' backbones declare they need
    fetched (their plugin module's ``PLUGTRAIN_FETCH``, :mod:`plugtrain.hub`), the specs validated first (cache
    look-ups off)."""
    from plugtrain.core.registry import get_registry
    from plugtrain.core.runtime.rundir import without_start_inputs
    from plugtrain.core.spec import SpecError, load_spec

    found, problems = [], []
    with without_start_inputs():  # this command looks the weights up itself
        for path in specs:
            try:
                spec = load_spec(path, list(overrides))
            except SpecError as exc:
                problems.extend(exc.problems)
                continue
            reg = get_registry()
            comp = reg.get("backbones", spec.backbone.name)
            name = comp.name
            needs_of = getattr(getattr(reg.plugin(comp.plugin), "module", None), "PLUGTRAIN_FETCH", None)
            if not callable(needs_of):
                console.echo(f"{path}: backbone {name!r} comes from plugin {comp.plugin!r}, which declares nothing to "
                             "fetch (PLUGTRAIN_FETCH)")
                continue
            needs = list(needs_of(comp.factory, dict(spec.backbone.params)) or ())
            if not needs:
                console.echo(f"{path}: no pretrained weights (backbone {name!r} starts from scratch)")
            found.extend((path, name, need) for need in needs)
    if problems:
        raise SpecError(problems)
    return found


def fetch(specs: Sequence[str], overrides: Sequence[str] = ()) -> int:
    """Download (or, offline, look up) every hub file the specs' backbones need; exit 2 when one cannot be had."""
    from plugtrain.hub import HubFiles, cached_file, download, hub_cache_dir, hub_offline

    offline = hub_offline()
    failed: list[str] = []
    unfit: list[str] = []  # files that are there but would be refused (another architecture than the backbone)
    done: dict[Any, str] = {}
    needs = _needs(specs, overrides)
    for path, name, need in needs:
        if not isinstance(need, HubFiles):
            where = need.path
            state = "a local file" if os.path.isfile(os.path.expanduser(where)) else "a local file that does not exist"
            console.echo(f"{path}: backbone {name!r} {need.param} = {where}: {state} (relative to the working "
                         "directory), nothing to fetch")
            continue
        head = f"{path}: backbone {name!r} {need.param} = {need.shown}"
        if need not in done:
            cached = cached_file(need)
            if cached is not None:
                done[need] = f"cached ({cached})"
            elif offline:
                failed.append(need.shown)
                done[need] = "NOT cached, and HF_HUB_OFFLINE is set: nothing can be fetched here"
            else:
                try:
                    done[need] = f"fetched ({download(need)})"
                except PlugtrainError as exc:
                    failed.append(need.shown)
                    done[need] = f"cannot be fetched: {str(exc).removeprefix(need.prefix)}"
        state = done[need]
        wrong = need.check() if need.check is not None and state.startswith(("cached", "fetched")) else None
        if wrong:  # the files are there, and training would refuse them: say so now
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
    if any(isinstance(need, HubFiles) for _, _, need in needs):
        console.echo(f"cache: {hub_cache_dir()} (training with HF_HUB_OFFLINE=1 reads the weights from here)")
    return 0


def run(action: str, specs: Sequence[str], overrides: Sequence[str] = ()) -> int:
    if action == "fetch":
        return fetch(specs, overrides)
    raise PlugtrainError(f"unknown weights action {action!r}: use `plugtrain weights fetch SPEC...`")
