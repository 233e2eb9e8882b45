"""Samplers and pruners are declared once (:mod:`plugtrain.sweep.strategies`, issue 22): the sweep file's check, the
Optuna objects built and the docs all come from that declaration. Real Optuna, no trial trained."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import optuna
import pytest
from conftest import tiny_spec
from helpers_sweep import write_sweep

from plugtrain.sweep import space, study
from plugtrain.sweep.strategies import KINDS, PRUNERS, SAMPLERS, describe

ROOT = Path(__file__).resolve().parents[2]
_GOOD = {"int": 3, "int_or_auto": 2, "bool": True}
_BAD = {"int": "three", "int_or_auto": "sometimes", "bool": 1}


def _sweep(tmp_path: Path, key: str, table: str) -> Path:
    spec = tiny_spec(tmp_path, "base", tmp_path / "runs")
    return write_sweep(tmp_path / "sw.toml", spec, f"""\
[sweep]
trials = 2
{key} = {table}

[params]
"data.batch_size" = {{ choice = [8, 16] }}
""")


def _table(name: str, options: dict) -> str:
    def toml(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else str(v)

    items = [f'name = "{name}"', *(f"{k} = {toml(v)}" for k, v in options.items())]
    return "{ " + ", ".join(items) + " }"


@pytest.mark.parametrize("key,name", [(k, n) for k, known in KINDS.items() for n in known])
def test_every_declared_strategy_and_option_is_accepted_and_reaches_optuna(tmp_path, key, name):
    strategy = KINDS[key][name]
    options = {o.name: max(_GOOD[o.kind], o.minimum) if o.kind != "bool" else True for o in strategy.options}
    sw = space.read(_sweep(tmp_path, key, _table(name, options)))
    assert getattr(sw, key).name == name and getattr(sw, key).options == options
    built = study.make_sampler(optuna, sw, 0) if key == "sampler" else study.make_pruner(optuna, sw)
    assert isinstance(built, optuna.samplers.BaseSampler if key == "sampler" else optuna.pruners.BasePruner)
    if strategy.options:  # each option is a keyword the Optuna class takes
        accepted = inspect.signature(type(built)).parameters
        assert {o.keyword for o in strategy.options} <= set(accepted), (name, set(accepted))


@pytest.mark.parametrize("key,name,option", [(k, n, o) for k, known in KINDS.items() for n, s in known.items()
                                             for o in s.options])
def test_a_value_of_the_wrong_type_or_below_the_bound_is_one_located_problem(tmp_path, key, name, option):
    bad = [_BAD[option.kind]] + ([option.minimum - 1] if option.kind != "bool" else [])
    for value in bad:
        path = _sweep(tmp_path, key, _table(name, {option.name: value}))
        with pytest.raises(space.SweepError) as info:
            space.read(path)
        problems = info.value.problems
        assert len(problems) == 1, problems
        assert re.match(rf".*sw\.toml:5:\d+: \[sweep\] {key}: {option.name} must be ", problems[0]), problems


def test_an_unknown_name_or_option_lists_the_declared_ones(tmp_path):
    with pytest.raises(space.SweepError) as info:
        space.read(_sweep(tmp_path, "sampler", '"tpee"'))
    assert f"must be one of {', '.join(SAMPLERS)}" in info.value.problems[0]
    assert "Did you mean 'tpe'" in info.value.problems[0]
    with pytest.raises(space.SweepError) as info:
        space.read(_sweep(tmp_path, "pruner", '{ name = "median", warmup = 1 }'))
    assert f"Accepted: {', '.join(o.name for o in PRUNERS['median'].options)}" in info.value.problems[0]


def test_the_defaults_are_the_first_declared():
    sw = space.Sweep(path=Path("x.toml"), display="x.toml", spec="s.toml", name="x")
    assert (sw.sampler.name, sw.pruner.name) == (next(iter(SAMPLERS)), next(iter(PRUNERS))) == ("tpe", "median")


def test_the_docs_name_every_declared_strategy_and_option():
    text = "\n".join(describe(k) for k in KINDS)
    for known in KINDS.values():
        for s in known.values():
            assert s.name in text and s.description in text
            assert all(o.name in text for o in s.options)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for key, known in KINDS.items():
        names = re.escape(" | ".join(known))
        assert re.search(rf"{key} = .*# {names}", readme), f"README's sweep file example: {key}"
        assert re.search(rf"{key} = .*# {names}", space.__doc__), f"space's docstring: {key}"
