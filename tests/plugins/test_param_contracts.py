"""Parameter contracts: ``Annotated[float, annotated_types.Ge(0)]`` & co. on a factory's parameters.

A real plugin package is written to a temporary folder (a ``*.dist-info`` with its entry point, as pip leaves it;
``helpers_plugins.make_dist``) and plugtrain runs in a child process with it on the path: ``plugtrain check`` refuses
what the annotations rule out with ``file:line:col``, ``plugtrain show`` prints the contract in the annotation column
and ``plugtrain schema`` carries it as JSON Schema keywords. The example plugin and the built-in components are held
to the same contracts; every float refuses ``inf``/``nan`` unless ``AllowNonFinite`` says otherwise, and every
integer must fit in 64 bits (TOML 1.0), wherever it appears.

The messages read ``loss.gamma must be >= 0, got -1``; the spec checker (``validate.py``) may still put a colon
after the key (``loss.gamma: must be >= 0, got -1``), which the patterns below accept.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from annotated_types import Ge, Gt, Interval, Le, Len, Lt, MinLen, MultipleOf, Predicate
from helpers_plugins import EXAMPLE_PLUGIN_SRC, make_dist, make_example_dist, run_plugtrain

from plugtrain.core.spec.typecheck import (
    AllowNonFinite,
    describe,
    from_annotation,
    json_schema,
    matches,
    mismatch,
    toml_view,
)

#: A plugin with one loss whose every parameter carries a contract. The module uses ``from __future__ import
#: annotations`` (the annotations are strings until plugtrain resolves them), as most plugins do.
CONTRACT_PLUGIN = '''
from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval, Le, Len, Lt, MaxLen, MinLen, MultipleOf

from plugtrain import Component, hookimpl
from plugtrain.core.spec.typecheck import AllowNonFinite


def contract_loss(
    gamma: Annotated[float, Ge(0)] = 2.0,
    rate: Annotated[float, Interval(gt=0, lt=1)] = 0.5,
    width: Annotated[int, MultipleOf(8), Ge(8)] = 16,
    temperature: Annotated[float, Gt(0), Le(10)] | None = None,
    ceiling: Annotated[float, Lt(100)] = 1.0,
    mode: Literal["mean", "sum"] = "mean",
    weights: Annotated[list[float], MinLen(1), MaxLen(4)] = (1.0,),
    tag: Annotated[str, Len(1, 8)] = "a",
    bound: Annotated[float, AllowNonFinite] = float("inf"),
    plain: float = 1.0,
):
    """A loss that only checks its parameters."""
    import torch

    return torch.nn.CrossEntropyLoss()


def anything(**kwargs):
    """A loss that takes any keyword."""
    import torch

    return torch.nn.CrossEntropyLoss()


@hookimpl
def plugtrain_losses():
    return [Component("contract-loss", contract_loss), Component("anything-loss", anything)]
'''

HEAD = """\
[run]
name = "contracts"

[data]
dataset = "sklearn-digits"

[backbone]
name = "resnet18"
in_chans = 1

[optimizer]
name = "AdamW"

[loss]
name = "contract-loss"
"""
HEAD_LINES = HEAD.count("\n")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> list[Path]:
    """The contract plugin installed under a temporary folder, plus the example plugin."""
    root = make_dist(tmp_path_factory.mktemp("contracts"), "contract-dist", {"contract": "pt_contract_plugin"},
                     {"pt_contract_plugin": CONTRACT_PLUGIN})
    return [root, make_example_dist(tmp_path_factory.mktemp("example")), EXAMPLE_PLUGIN_SRC]


def _check(paths: list[Path], spec: Path) -> tuple[int, list[str]]:
    proc = run_plugtrain("check", str(spec), paths=paths)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.startswith(str(spec))]


def _problem(key: str, rule: str) -> str:
    """A problem line's pattern after ``file:line:col:``: ``KEY must be RULE`` (a colon after the key allowed)."""
    return rf"{re.escape(key)}:? {rule}"


# -- a plugin's contracts through the real CLI ------------------------------------------------------------------------


#: ``(line, key, rule)``: a line of ``[loss]`` and the problem ``plugtrain check`` must report for it.
REFUSED = [
    ("gamma = -1", "loss.gamma", r"must be >= 0, got -1"),
    ("rate = 1", "loss.rate", r"must be in \(0, 1\), got 1"),
    ("rate = 0.0", "loss.rate", r"must be in \(0, 1\), got 0\.0"),
    ("width = 12", "loss.width", r"must be a multiple of 8, got 12"),
    ("width = 0", "loss.width", r"must be >= 8, got 0"),
    ("temperature = 10.5", "loss.temperature", r"must be in \(0, 10\], got 10\.5"),
    ("ceiling = 100", "loss.ceiling", r"must be < 100, got 100"),
    ('mode = "avg"', "loss.mode", r'expected one of "mean", "sum", got "avg" \(a string\)'),
    ("weights = []", "loss.weights", r"must have a length in \[1, 4\], got \[\]"),
    ("weights = [1.0, 2.0, 3.0, 4.0, 5.0]", "loss.weights", r"must have a length in \[1, 4\], got \[1\.0, 2\.0.*"),
    ("weights = [1.0, nan]", "loss.weights", r"item 2 must be finite \(inf and nan are refused here\), got nan"),
    ('tag = ""', "loss.tag", r'must have a length in \[1, 8\], got ""'),
    ("plain = inf", "loss.plain", r"must be finite \(inf and nan are refused here\), got inf"),
    ("plain = nan", "loss.plain", r"must be finite \(inf and nan are refused here\), got nan"),
    ("gamma = -inf", "loss.gamma", r"must be finite \(inf and nan are refused here\), got -inf"),
]


def test_check_refuses_what_the_annotation_rules_out_with_file_line_col(plugin, tmp_path):
    """Every refused value is reported at its own line and column; a key appears once per spec, so the cases are
    spread over a few specs (each checked by one child process)."""
    groups: list[list[tuple[str, str, str]]] = []
    for case in REFUSED:
        group = next((g for g in groups if all(c[1] != case[1] for c in g)), None)
        if group is None:
            groups.append(group := [])
        group.append(case)
    for n, group in enumerate(groups):
        spec = tmp_path / f"s{n}.toml"
        spec.write_text(HEAD + "".join(line + "\n" for line, _, _ in group))
        code, problems = _check(plugin, spec)
        assert code == 2 and len(problems) == len(group), problems
        for i, ((line, key, rule), problem) in enumerate(zip(group, problems, strict=True)):
            col = line.index("=") + 3  # the value's column
            assert re.fullmatch(rf"{re.escape(str(spec))}:{HEAD_LINES + 1 + i}:{col}: " + _problem(key, rule),
                                problem), problem


def test_check_accepts_what_the_annotation_allows(plugin, tmp_path):
    spec = tmp_path / "ok.toml"
    spec.write_text(HEAD + "gamma = 0\nrate = 0.25\nwidth = 24\ntemperature = 10\nceiling = -1e9\nmode = \"sum\"\n"
                           "weights = [0.5, 0.5, 1.0, 2.0]\ntag = \"abcdefgh\"\nbound = inf\nplain = -3\n")
    proc = run_plugtrain("check", str(spec), paths=plugin)
    assert proc.returncode == 0, proc.stderr
    assert f"{spec}: OK" in proc.stdout
    spec.write_text(HEAD + "bound = nan\n")  # AllowNonFinite: nan and -inf too
    assert run_plugtrain("check", str(spec), paths=plugin).returncode == 0


def test_integers_beyond_64_bits_are_refused_everywhere(plugin, tmp_path):
    """TOML 1.0 makes an integer outside [-2**63, 2**63 - 1] an error; tomllib accepts any size, plugtrain not: the
    spec reader refuses it where it stands (and the value checker would, for a value that comes from elsewhere),
    even where a parameter takes anything (``**kwargs``)."""
    big = 2**64
    spec = tmp_path / "big.toml"
    spec.write_text(HEAD.replace('"contract-loss"', '"anything-loss"') + f"extra = [1, {big}]\n"
                    + f"[trainer]\nlog_every_steps = {-big}\n")
    code, problems = _check(plugin, spec)
    assert code == 2 and len(problems) == 2, problems
    assert re.search(rf":{HEAD_LINES + 1}:\d+: loss\.extra.*integer {big}.* does not fit in 64 bits", problems[0])
    assert re.search(rf":{HEAD_LINES + 3}:\d+: trainer\.log_every_steps.*integer {-big}.* does not fit in 64 bits",
                     problems[1])


def test_show_prints_the_contract_in_the_annotation_column(plugin):
    proc = run_plugtrain("show", "losses", "contract-loss", paths=plugin)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in proc.stdout.splitlines() if "\t" in line}
    assert rows["gamma"] == ["float >= 0", "2.0"]
    assert rows["rate"] == ["float in (0, 1)", "0.5"]
    assert rows["width"] == ["int >= 8, multiple of 8", "16"]
    assert rows["temperature"] == ["float in (0, 10] | None", "None"]
    assert rows["ceiling"] == ["float < 100", "1.0"]
    assert rows["mode"] == ["Literal['mean', 'sum']", "'mean'"]
    assert rows["weights"] == ["list[float] length in [1, 4]", "(1.0,)"]
    assert rows["tag"] == ["str length in [1, 8]", "'a'"]
    assert rows["bound"] == ["float, inf/nan allowed", "inf"]
    assert rows["plain"] == ["float", "1.0"]
    data = json.loads(run_plugtrain("show", "losses", "contract-loss", "--json", paths=plugin).stdout)
    assert {p["name"]: p["annotation"] for p in data["params"]}["gamma"] == "float >= 0"


def test_schema_carries_the_contract(plugin):
    proc = run_plugtrain("schema", paths=plugin)
    assert proc.returncode == 0, proc.stderr
    loss = json.loads(proc.stdout)["properties"]["loss"]
    groups = {n: g["then"]["properties"] for g in loss["allOf"] for n in g["if"]["properties"]["name"]["enum"]}
    props = groups["contract-loss"]
    assert props["gamma"] == {"type": "number", "minimum": 0, "default": 2.0, "description": "float >= 0 (default 2.0)"}
    assert (props["rate"]["exclusiveMinimum"], props["rate"]["exclusiveMaximum"]) == (0, 1)
    assert (props["width"]["type"], props["width"]["multipleOf"], props["width"]["minimum"]) == ("integer", 8, 8)
    assert (props["temperature"]["exclusiveMinimum"], props["temperature"]["maximum"]) == (0, 10)
    assert props["ceiling"]["exclusiveMaximum"] == 100
    assert (props["weights"]["minItems"], props["weights"]["maxItems"]) == (1, 4)
    assert (props["tag"]["minLength"], props["tag"]["maxLength"]) == (1, 8)
    assert props["mode"]["enum"] == ["mean", "sum"]
    example = groups["example-focal"]
    assert example["gamma"]["minimum"] == 0


# -- the example plugin and the built-ins --------------------------------------------------------------------------


def test_the_example_plugins_gamma_is_a_contract(plugin, tmp_path):
    spec = tmp_path / "focal.toml"
    spec.write_text(HEAD.replace('"contract-loss"', '"example-focal"') + "gamma = -1\n")
    code, problems = _check(plugin, spec)
    assert code == 2 and len(problems) == 1, problems
    assert re.fullmatch(rf"{re.escape(str(spec))}:{HEAD_LINES + 1}:9: " + _problem("loss.gamma", "must be >= 0, got -1"),
                        problems[0]), problems[0]
    shown = run_plugtrain("show", "losses", "example-focal", paths=plugin).stdout
    assert "gamma\tfloat >= 0\t2.0" in shown


#: The sections of a spec that names built-in components only; a test replaces or adds one.
BUILTIN = {"run": 'name = "builtins"', "data": 'dataset = "sklearn-digits"', "backbone": 'name = "resnet18"',
           "loss": 'name = "CrossEntropy"', "optimizer": 'name = "AdamW"'}


#: ``(section, its lines, key, rule)``: a built-in component (or a spec section) given a value its contract refuses.
BUILTIN_REFUSED = [
    ("scheduler", 'name = "OneCycleLR"\nmax_lr = 0', "scheduler.max_lr", r"must be > 0, got 0"),
    ("scheduler", 'name = "OneCycleLR"\npct_start = 1.0', "scheduler.pct_start", r"must be in \(0, 1\), got 1\.0"),
    ("scheduler", 'name = "CosineAnnealingLR"\nT_max = 0', "scheduler.T_max", r"must be >= 1, got 0"),
    ("scheduler", 'name = "ReduceLROnPlateau"\nfactor = 1.5', "scheduler.factor", r"must be in \(0, 1\), got 1\.5"),
    ("optimizer", 'name = "Madgrad"\nmomentum = 1.0', "optimizer.momentum", r"must be in \[0, 1\), got 1\.0"),
    ("optimizer", 'name = "AdamW"\nlr = inf', "optimizer.lr", r"must be finite \(inf and nan are refused here\)"),
    ("backbone", 'name = "resnet18"\ndrop_path_rate = 1.0', "backbone.drop_path_rate",
     r"must be in \[0, 1\), got 1\.0"),
    ("backbone", 'name = "resnet18"\ngem_p = 0', "backbone.gem_p", r"must be > 0, got 0"),
    ("loss", 'name = "LabelSmoothing"\nlabel_smoothing = 1.5', "loss.label_smoothing", r"must be in \[0, 1\]"),
    ("loss", 'name = "CrossEntropy"\nweight = [1.0, -1.0]', "loss.weight", r"item 2 must be >= 0 \(or one of \"balanced\"\), got -1\.0"),
    ("trainer", "clip_grad_norm = nan", "trainer.clip_grad_norm", r"must be finite"),
    ("trainer", "swa_lr = inf", "trainer.swa_lr", r"must be finite"),
    ("scheduler", 'name = "StepLR"\nwarmup_epochs = inf', "scheduler.warmup_epochs", r"must be finite"),
]


def test_builtin_components_and_sections_keep_their_contracts(tmp_path, cli_run):
    groups: list[list[tuple[str, str, str, str]]] = []
    for case in BUILTIN_REFUSED:  # a section appears once per spec: a few specs, one check each
        group = next((g for g in groups if all(c[0] != case[0] for c in g)), None)
        if group is None:
            groups.append(group := [])
        group.append(case)
    for n, group in enumerate(groups):
        sections = {**BUILTIN, **{section: lines for section, lines, _, _ in group}}
        spec = tmp_path / f"b{n}.toml"
        spec.write_text("".join(f"[{name}]\n{body}\n\n" for name, body in sections.items()))
        proc = cli_run("check", spec)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        problems = [line for line in proc.stderr.splitlines() if line.startswith(str(spec))]
        for _, _, key, rule in group:
            mine = [p for p in problems if f": {key}" in p]
            assert len(mine) == 1 and re.search(_problem(key, rule), mine[0]), (key, problems)


def test_show_of_builtins_prints_their_contracts(cli_run):
    proc = cli_run("show", "schedulers", "OneCycleLR")
    assert proc.returncode == 0, proc.stderr
    assert "max_lr\tfloat > 0 | None\tNone" in proc.stdout
    assert "pct_start\tfloat in (0, 1)\t0.3" in proc.stdout
    proc = cli_run("show", "backbones", "resnet18")
    assert "drop_rate\tfloat in [0, 1)\t0.0" in proc.stdout and "in_chans\tint >= 1\t3" in proc.stdout


# -- the type tree, in process ----------------------------------------------------------------------------------------


def _t(annotation: Any, ns: dict | None = None):
    return toml_view(from_annotation(annotation, ns))


NS = {"Annotated": Annotated, "Ge": Ge, "Gt": Gt, "Interval": Interval, "MinLen": MinLen, "AllowNonFinite":
      AllowNonFinite, "Literal": Literal, "math": math}


@pytest.mark.parametrize(("annotation", "good", "bad", "shown", "schema"), [
    (Annotated[float, Ge(0)], [0, 2.5], [-1, -0.0001, math.inf, math.nan], "float >= 0",
     {"type": "number", "minimum": 0}),
    (Annotated[float, Interval(ge=0, lt=1)], [0, 0.999], [1, -1], "float in [0, 1)",
     {"type": "number", "minimum": 0, "exclusiveMaximum": 1}),
    (Annotated[int, Gt(0)] | None, [1], [0, 1.5], "int > 0", {"type": "integer", "exclusiveMinimum": 0}),
    (Annotated[float, Le(1), MultipleOf(0.25)], [0.5, -0.75], [0.3, 1.25], "float <= 1, multiple of 0.25",
     {"type": "number", "maximum": 1, "multipleOf": 0.25}),
    (Annotated[list[int], Len(2, 2)], [[1, 2]], [[1], [1, 2, 3]], "list[int] length of 2",
     {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}),
    (Annotated[str, Predicate(str.isdigit)], ["12"], ["1a"], "str satisfying str.isdigit", {"type": "string"}),
    (Annotated[float, AllowNonFinite], [math.inf, -math.inf, math.nan, 1], ["x"], "float, inf/nan allowed",
     {"type": "number"}),
    (Annotated[float, Ge(0), AllowNonFinite], [math.inf], [-math.inf, math.nan], "float >= 0, inf/nan allowed",
     {"type": "number", "minimum": 0}),
    (tuple[Annotated[float, Interval(ge=0, lt=1)], Annotated[float, Interval(ge=0, lt=1)]], [[0.9, 0.99]],
     [[0.9, 1.0]], "tuple[float in [0, 1), float in [0, 1)]", None),
    # string annotations (from __future__ import annotations) are parsed, never evaluated
    ("Annotated[float, Ge(0)]", [0], [-1], "float >= 0", {"type": "number", "minimum": 0}),
    ("Annotated[float, Interval(gt=-1, le=1)] | None", [1], [-1], "float in (-1, 1]",
     {"type": "number", "exclusiveMinimum": -1, "maximum": 1}),
    ("Annotated[float, AllowNonFinite]", [math.inf], [], "float, inf/nan allowed", {"type": "number"}),
    ("Annotated[float, Gt(math.pi)]", [4], [3], f"float > {math.pi}", None),
    ("Annotated[float, print('evaluated!')]", [1.0], [], "float", {"type": "number"}),  # unknown metadata ignored
    (float, [1, 2**63 - 1, -(2**63)], [math.inf, math.nan, 2**63, -(2**63) - 1], "float", {"type": "number"}),
    (int, [0], [2**63], "int", {"type": "integer"}),
])
def test_annotated_types_become_checks_text_and_schema(annotation, good, bad, shown, schema, capsys):
    t = _t(annotation, NS)
    for v in good:
        assert matches(v, t), (annotation, v)
    for v in bad:
        assert not matches(v, t), (annotation, v)
        assert mismatch(v, t)
    assert describe(t) == shown
    if schema is not None:
        assert json_schema(t) == schema
    assert "evaluated!" not in capsys.readouterr().out


def test_messages_say_which_rule_failed():
    assert mismatch(-1, _t(Annotated[float, Ge(0)])) == "must be >= 0, got -1"
    assert mismatch(math.nan, _t(Annotated[float, Ge(0), AllowNonFinite])) == "must be >= 0, got nan"
    assert mismatch([0.5, 2.0], _t(list[Annotated[float, Le(1)]])) == "item 2 must be <= 1, got 2.0"
    assert mismatch({"a": -1}, _t(dict[str, Annotated[int, Ge(0)]])) == 'key "a" must be >= 0, got -1'
    assert mismatch(0, _t(Annotated[int, Ge(1)] | Literal["all"])) == 'must be >= 1 (or one of "all"), got 0'
    # a value of the wrong type still gets the type message, with the contract in it
    assert mismatch("x", _t(Annotated[float, Gt(0)])) == 'expected float > 0, got "x" (a string)'
    assert mismatch([[2**70]], _t(Any)) == (f"holds the integer {2**70}, which does not fit in 64 bits: TOML "
                                            "integers go from -9223372036854775808 to 9223372036854775807")
    assert mismatch(2**63, _t(float)).startswith(f"the integer {2**63} does not fit in 64 bits")
    assert not matches({"k": [1, 2**63]}, _t(Any)) and matches({"k": [1, 2**63 - 1]}, _t(Any))


def test_registry_shows_annotated_parameters():
    from plugtrain.core.registry import signature_params

    def factory(a: Annotated[float, Ge(0)] = 1.0, b: Annotated[int, Ge(1)] | None = None,
                c: list[Annotated[float, Lt(1)]] | None = None, d: float | None = None):
        pass

    params, _ = signature_params(factory)
    assert [p.annotation_str for p in params] == ["float >= 0", "int >= 1 | None", "list[float < 1] | None",
                                                  "float | None"]
