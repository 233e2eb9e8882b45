"""The run's task: the ``tasks`` component that ``run.task`` names, built with the spec's ``[task]`` parameters.

Core asks the task (:class:`plugtrain.core.hookspecs.Task`) for everything that depends on what a run predicts and
never names one. A task is cheap to build, so it is built where it is needed and kept per registry, name and
parameters; a task that cannot be built, or that lacks a member of its contract, is one PlugtrainError.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.registry import Registry

_built: weakref.WeakKeyDictionary[Registry, dict[str, Any]] = weakref.WeakKeyDictionary()


def _names() -> Any:
    """Where names are looked up by default: the component catalog (no plugin's libraries imported to answer)."""
    from plugtrain.core.catalog import get_catalog

    return get_catalog()


def get_task(name: str, params: dict[str, Any] | None = None, registry: Registry | None = None) -> Any:
    """The task component ``name`` built with ``params``: an unknown name is a PlugtrainError with a did-you-mean."""
    reg = registry or _names()
    key = f"{name}\0{json.dumps(params or {}, sort_keys=True, default=repr)}"
    cache = _built.setdefault(reg, {})
    if key not in cache:
        from plugtrain.core.runtime.build import contract_problem

        comp = reg.get("tasks", name)
        try:
            task = comp.build(dict(params or {}))
        except PlugtrainError:
            raise
        except Exception as exc:  # a factory's error is the user's input, reported in one line
            raise PlugtrainError(f"[task] task {name!r} ({comp.plugin}) could not be built: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from exc
        problem = contract_problem("tasks", task)
        if problem:
            raise PlugtrainError(f"[task] task {name!r} ({comp.plugin}) returned a {type(task).__name__} that "
                                 f"{problem} (see plugtrain.core.hookspecs.Task)")
        cache[key] = task
    return cache[key]


def spec_task(spec: Any) -> Any:
    """The task of a :class:`~plugtrain.core.spec.model.RunSpec`."""
    return get_task(spec.run.task, getattr(spec, "task", None))


def task_params(spec: Any, registry: Registry | None = None) -> dict[str, Any]:
    """The parameters of a spec's task: its factory's defaults, then the spec's ``[task]`` table (given to metric
    factories as the context ``task_params``: a threshold the task and its metrics share)."""
    comp = (registry or _names()).get("tasks", spec.run.task)
    return {**{p.name: p.default for p in comp.params if not p.required}, **(getattr(spec, "task", None) or {})}


def default_task_name(registry: Registry | None = None) -> str:
    """The name of the task of a spec without ``run.task``: the task that claims the role ``default``."""
    reg = registry or _names()
    return reg.spec_name(reg.with_role("tasks", "default"))


def outputs_of(name: str, registry: Registry | None = None) -> str | None:
    """What the model of a run of task ``name`` outputs; ``None`` for a task that is unknown or cannot be built."""
    try:
        return get_task(name, registry=registry).outputs
    except PlugtrainError:
        return None


def task_for_dataset(dataset_task: Any, registry: Registry | None = None) -> Any:
    """The first registered task that trains on a dataset whose targets are ``dataset_task``
    (``DatasetSplits.task``); the default task when none says so."""
    reg = registry or _names()
    for comp in reg.components("tasks"):
        task = get_task(reg.spec_name(comp), registry=reg)
        if dataset_task in task.dataset_tasks:
            return task
    return get_task(default_task_name(reg), registry=reg)


def default_metrics(task_name: str, task: Any, registry: Registry | None = None) -> list[str]:
    """The metrics of a spec without ``[[metrics]]``: the task's, then the metrics that claim the role
    ``default:<task name>`` (plugins adding to a task's defaults)."""
    reg = registry or _names()
    names = list(task.default_metrics)
    names += [n for n in (reg.spec_name(c) for c in reg.role_components("metrics", f"default:{task_name}"))
              if n not in names]
    return names


def required_metrics(task_name: str, task: Any, registry: Registry | None = None) -> list[str]:
    """The metrics put first in every ``[[metrics]]`` list that lacks them: the task's, then those with the role
    ``always:<task name>``."""
    reg = registry or _names()
    names = list(task.required_metrics)
    names += [n for n in (reg.spec_name(c) for c in reg.role_components("metrics", f"always:{task_name}"))
              if n not in names]
    return names
