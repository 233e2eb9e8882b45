"""``--set KEY.PATH=VALUE`` overrides and ``check --print``: parsing, applying (nested augmentation lists included),
validation that names the override, and round trips of the printed spec (hypothesis: random valid ``--set``
sequences survive ``--print``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from helpers_plugins import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugtrain.commands.check import run as check_command
from plugtrain.core.spec import SpecError, dumps, load_spec, resolve, to_dict
from plugtrain.core.spec.model import PRECISIONS, AugmentationSpec, RunSpec
from plugtrain.core.spec.overrides import OverrideError, apply, parse_key, parse_override, parse_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GOOD = REPO / "tests" / "specs" / "good"
BASE = GOOD / "base.toml"
FULL = GOOD / "full.toml"  # train[0] SomeOf > transforms[0] Sequential > transforms[0] OneOf > two flips
ONEOF = "augmentations.train[0].transforms[0].transforms[0]"


# -- parsing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "value"), [
    ("optimizer.lr=3e-4", ("optimizer", "lr"), 3e-4),
    ('backbone.name="convnext_atto"', ("backbone", "name"), "convnext_atto"),
    ('trainer.precision="fp32"', ("trainer", "precision"), "fp32"),
    ("trainer.precision='bf16'", ("trainer", "precision"), "bf16"),  # a TOML literal string
    ("run.epochs=1_000", ("run", "epochs"), 1000),
    ("run.seed=0x1F", ("run", "seed"), 31),
    ("run.deterministic=true", ("run", "deterministic"), True),
    ("optimizer.lr = 0.5 ", ("optimizer", "lr"), 0.5),
    ("augmentations.train[0].p=0.3", ("augmentations", "train", 0, "p"), 0.3),
    ("augmentations.train[-1].p=0.3", ("augmentations", "train", -1, "p"), 0.3),
    ("augmentations.train[1].transforms[0].size=[24, 24]",
     ("augmentations", "train", 1, "transforms", 0, "size"), [24, 24]),
    ('augmentations.train=[{ name = "HorizontalFlip" }]', ("augmentations", "train"), [{"name": "HorizontalFlip"}]),
    ('loss={ name = "ArcFace", margin = 20.0 }', ("loss",), {"name": "ArcFace", "margin": 20.0}),
    ('data."odd key"=1', ("data", "odd key"), 1),
    ('run.name="a=b"', ("run", "name"), "a=b"),  # the first '=' splits key from value
])
def test_override_is_a_key_path_and_a_toml_value(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize(("text", "message"), [
    ("optimizer.lr", "expected KEY.PATH=VALUE"),
    ("optimizer.lr=", "the value is empty"),
    ("run.name=resnet", "--set 'run.name=\"resnet\"'"),  # a bare word: how to quote it, shell included
    ("optimizer.lr=[1, 2", "is not TOML"),
    ("optimizer.lr=1 2", "is not TOML"),
    ("=1", "the key is empty"),
    ("run..name=1", "cannot read the key"),
    ("run.name[x]=1", "cannot read the key"),
    ('extends="base.toml"', "extends cannot be overridden"),
])
def test_malformed_override_says_what_to_write(text, message):
    with pytest.raises(OverrideError, match=re.escape(message)):
        parse_override(text)


def test_a_bare_word_is_never_taken_for_a_string():
    """``--set run.name=1e3`` and ``--set run.name=true`` must not silently mean different things."""
    assert parse_value("1e3", "run.name") == 1000.0
    assert parse_value("true", "run.name") is True
    with pytest.raises(OverrideError, match="needs double quotes"):
        parse_value("fp32", "trainer.precision")
    assert parse_key('a."b.c"[2][0].d') == ("a", "b.c", 2, 0, "d")


def test_apply_creates_tables_and_indexes_only_what_exists():
    d: dict[str, Any] = {"augmentations": {"train": [{"name": "A"}, {"name": "B", "transforms": [{"name": "C"}]}]}}
    apply(d, ("scheduler", "name"), "StepLR")
    assert d["scheduler"] == {"name": "StepLR"}
    apply(d, ("augmentations", "train", 1, "transforms", 0, "p"), 0.2)
    apply(d, ("augmentations", "train", -2, "p"), 0.1)
    assert d["augmentations"]["train"] == [{"name": "A", "p": 0.1},
                                           {"name": "B", "transforms": [{"name": "C", "p": 0.2}]}]
    with pytest.raises(OverrideError, match=r"augmentations.train has 2 items: index \[2\] is out of range"):
        apply(d, ("augmentations", "train", 2, "p"), 0.5)
    with pytest.raises(OverrideError, match=r"augmentations.val does not exist, so \[0\] cannot index it"):
        apply(d, ("augmentations", "val", 0, "p"), 0.5)
    with pytest.raises(OverrideError, match="scheduler.name is not a table"):
        apply(d, ("scheduler", "name", "x"), 1)
    with pytest.raises(OverrideError, match="is not an array"):
        apply(d, ("scheduler", 0), 1)


# -- applying to a spec --------------------------------------------------------------------------------------------


def test_overrides_apply_in_order_and_reach_the_typed_spec():
    spec = load_spec(FULL, [
        "optimizer.lr=0.5", "optimizer.lr=0.25",  # repeatable: the last one wins
        'backbone.name="convnext_atto"',
        f"{ONEOF}.transforms[1].p=0.125",  # OneOf inside Sequential inside SomeOf
        "augmentations.train[0].transforms[-1].std_range=[0.02, 0.03]",
        'scheduler={ name = "StepLR", step_size = 2 }',  # a whole table
        "trainer.precision='fp32'",
    ])
    assert spec.optimizer.params["lr"] == 0.25
    assert spec.backbone.name == "convnext_atto"
    some_of = spec.augmentations.train[0]
    assert isinstance(some_of, AugmentationSpec) and some_of.name == "SomeOf"
    one_of = some_of.transforms[0].transforms[0]
    assert one_of.name == "OneOf" and one_of.transforms[1].name == "VerticalFlip"
    assert one_of.transforms[1].params == {"p": 0.125}
    assert some_of.transforms[-1].params == {"std_range": [0.02, 0.03]}
    assert spec.scheduler.name == "StepLR" and spec.scheduler.params == {"step_size": 2}
    assert spec.scheduler.warmup_epochs == 0.0  # the file's ReduceLROnPlateau keys went with the table
    assert spec.trainer.precision == "fp32"


def test_an_override_can_replace_a_nested_augmentation_list():
    spec = load_spec(FULL, [f'{ONEOF}.transforms=[{{ name = "Transpose" }}, {{ name = "RandomRotate90", p = 1.0 }}]'])
    one_of = spec.augmentations.train[0].transforms[0].transforms[0]
    assert [t.name for t in one_of.transforms] == ["Transpose", "RandomRotate90"]


def _problems(path: Path, overrides: list[str]) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def test_a_bad_override_is_named_in_its_error_in_the_order_given():
    probs = _problems(FULL, [
        "optimizer.lr=-1",
        f"{ONEOF}.transforms[1].p=3",
        'backbone.name="resnet19"',
        "data.num_workers=-2",
        "optimizer.nesterov=1",
        "run.epochs=0",
    ])
    shown = str(FULL)
    assert probs == [
        f"{shown}: --set optimizer.lr=-1: optimizer.lr must be > 0, got -1",
        f"{shown}: --set {ONEOF}.transforms[1].p=3: {ONEOF}.transforms[1].p must be in [0, 1], got 3",
        f"{shown}: --set backbone.name=\"resnet19\": backbone.name: unknown backbone 'resnet19'. Did you mean "
        "'resnet18', 'resnet61q' or 'resnet51q'? Run `plugtrain list backbones` to see them all.",
        f"{shown}: --set data.num_workers=-2: data.num_workers must be >= 0, got -2",
        f"{shown}: --set optimizer.nesterov=1: optimizer.nesterov: expected bool, got 1 (an integer)",
        f"{shown}: --set run.epochs=0: run.epochs must be > 0, got 0",
    ]


def test_override_errors_and_file_errors_come_together():
    """A malformed override, an index out of range, a bad value and the file's own problem: all reported."""
    spec = REPO / "tests" / "specs" / "bad" / "range_lr.toml"
    probs = _problems(spec, ["optimizer.lr=abc", "augmentations.train[5].p=0.5", "run.epochs=-3"])
    assert len(probs) == 4, probs
    assert probs[0].startswith(f"{spec}: --set optimizer.lr=abc: the value 'abc' is not TOML")
    assert probs[1] == f"{spec}: --set augmentations.train[5].p=0.5: augmentations.train does not exist, so [5] " \
                       "cannot index it"
    assert probs[2] == f"{spec}:6:6: optimizer.lr must be > 0, got 0.0"  # "abc" did not replace the file's value
    assert probs[3] == f"{spec}: --set run.epochs=-3: run.epochs must be > 0, got -3"


def test_an_override_fixes_a_bad_value_of_the_file():
    spec = REPO / "tests" / "specs" / "bad" / "range_lr.toml"
    assert load_spec(spec, ["optimizer.lr=0.1"]).optimizer.params["lr"] == 0.1


def test_a_component_renamed_by_an_override_blames_the_override_for_what_no_longer_fits():
    probs = _problems(BASE, ['optimizer.name="SGD"', "optimizer.betas=[0.9, 0.99]"])
    assert probs == [f"{BASE}: --set optimizer.betas=[0.9, 0.99]: unknown key 'betas' in [optimizer] (optimizer "
                     "'SGD'). Accepted: no_decay_norm_bias, layer_decay, lr, momentum, dampening, weight_decay, nesterov, "
                     "maximize, foreach, differentiable, fused."]
    probs = _problems(FULL, ['backbone.name="example-missing"'])
    assert len(probs) == 1 and "--set backbone.name=\"example-missing\": backbone.name: unknown backbone" in probs[0]


def test_a_file_problem_caused_by_an_overridden_name_points_at_the_file_and_names_the_override():
    probs = _problems(BASE, ['augmentations.train[0].name="Affine"', 'augmentations.train[0].name="RandomResizedCrop"',
                             'data.dataset="imagefolder"'])
    assert probs == [
        f"{BASE}:8:1: [data] (dataset 'imagefolder') is missing required parameter 'root' (str) "
        '(dataset from --set data.dataset="imagefolder")',
        f"{BASE}:29:10: augmentations.train[0] (augmentation 'RandomResizedCrop') is missing required parameter "
        "'size' (tuple[int, int]) (name from --set augmentations.train[0].name=\"RandomResizedCrop\")",
    ]
    probs = _problems(FULL, ['optimizer.name="Adam"'])
    assert [p.split(": ", 1)[0] for p in probs] == [f"{FULL}:35:1", f"{FULL}:36:1"]  # momentum, nesterov
    assert all(p.endswith(' (name from --set optimizer.name="Adam")') for p in probs)
    assert "unknown key 'momentum' in [optimizer] (optimizer 'Adam')" in probs[0]


def test_a_section_created_by_an_override_is_checked_like_one_in_a_file():
    probs = _problems(BASE, ["scheduler.step_size=2"])
    assert probs == [f"{BASE}: --set scheduler.step_size=2: [scheduler] is missing 'name': which scheduler? "
                     "Run `plugtrain list schedulers` to see them all."]
    probs = _problems(BASE, ['scheduler.name="StepLR"', "scheduler.step_size=0"])
    assert probs == [f"{BASE}: --set scheduler.step_size=0: scheduler.step_size must be >= 1, got 0"]


def test_file_problems_keep_pointing_at_the_file_under_unrelated_overrides():
    spec = REPO / "tests" / "specs" / "bad" / "nested_composition.toml"
    res = resolve(spec, ["optimizer.lr=0.1", "run.epochs=3"])
    assert len(res.problems) == 3
    assert all(p.startswith(f"{spec}:") and "--set" not in p for p in res.problems)


# -- check --print -------------------------------------------------------------------------------------------------


def test_print_writes_the_resolved_spec_as_toml_that_is_a_valid_spec(capsys, tmp_path):
    grandchild = GOOD / "deeper" / "grandchild.toml"
    overrides = ["optimizer.lr=0.5", "augmentations.train[0].transforms[1].p=0.25"]
    assert check_command([str(grandchild)], overrides, print_resolved=True) == 0
    out = capsys.readouterr().out
    doc = tomllib.loads(out)
    assert "extends" not in doc  # composed: the printed spec stands alone
    assert doc["run"]["name"] == "good-child" and doc["run"]["epochs"] == 5  # chain: child, then grandchild
    assert doc["data"]["batch_size"] == 32  # from base.toml
    assert doc["optimizer"]["lr"] == 0.5  # the override
    assert doc["augmentations"]["train"][0]["transforms"][1] == {"name": "RandomRotate90", "p": 0.25}
    assert doc["trainer"]["log_every_steps"] == 50  # defaults filled in
    assert doc["data"]["persistent_workers"] is True
    printed = tmp_path / "printed.toml"
    printed.write_text(out)
    assert load_spec(printed) == load_spec(grandchild, overrides)
    assert check_command([str(printed)], [], print_resolved=True) == 0
    assert capsys.readouterr().out == out  # a fixed point


def test_check_prints_an_ok_line_per_spec_and_raises_every_problem_after(capsys):
    bad = REPO / "tests" / "specs" / "bad"
    paths = [str(BASE), str(bad / "range_p.toml"), str(FULL), str(bad / "unknown_loss.toml")]
    with pytest.raises(SpecError) as info:
        check_command(paths, [])
    assert capsys.readouterr().out.splitlines() == [f"{BASE}: OK", f"{FULL}: OK"]
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("plugtrain: error: 3 problems in the spec:\n")


def test_print_of_several_specs_separates_them(capsys):
    assert check_command([str(BASE), str(FULL)], [], print_resolved=True) == 0
    out = capsys.readouterr().out
    assert out.count("# ---- ") == 2
    first, second = out.split(f"# ---- {FULL}\n")
    assert tomllib.loads(first)["run"]["name"] == "good-base"
    assert tomllib.loads(second)["run"]["name"] == "good-full"


def test_printed_toml_quotes_what_needs_quoting(tmp_path):
    name = 'a "quoted" name \\ with\ttab, newline\n, unicode é 🤖 and = [ ] #'
    spec = load_spec(FULL, ["run.name=" + tomli_w.dumps({"v": name})[4:].strip(),
                            'data.class_subset=["1", "it\'s", ""]', "augmentations.mean=[0.5e-3]"])
    printed = dumps(spec)
    path = tmp_path / "p.toml"
    path.write_text(printed, encoding="utf-8")
    again = load_spec(path)
    assert again.run.name == name
    assert again.data.class_subset == ["1", "it's", ""]
    assert again == spec


# -- hypothesis: random valid --set sequences survive --print ------------------------------------------------------


def _toml_int(draw, n: int) -> str:
    forms = [str(n), f"+{n}" if n >= 0 else str(n)]
    if abs(n) >= 1000:
        forms.append(f"{n:_}")
    if n >= 0:
        forms += [hex(n), oct(n), bin(n)]
    return draw(st.sampled_from(forms))


def _toml_float(draw, x: float) -> str:
    forms = [repr(x), f"{x:.17e}"]
    return draw(st.sampled_from(forms))


def _toml_str(draw, s: str) -> str:
    forms = [tomli_w.dumps({"v": s})[4:].strip()]
    if "'" not in s and not any(ord(c) < 32 or ord(c) == 127 for c in s):
        forms.append(f"'{s}'")
    return draw(st.sampled_from(forms))


def _toml(draw, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return _toml_int(draw, v)
    if isinstance(v, float):
        return _toml_float(draw, v)
    if isinstance(v, str):
        return _toml_str(draw, v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(draw, x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(draw, x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
_simple_aug = st.builds(lambda name, p: {"name": name, "p": p},
                        st.sampled_from(["HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90"]), _unit)

#: key path -> strategy of valid values, for FULL.
VALID: dict[str, st.SearchStrategy] = {
    # A name is a path segment: no NUL byte, not blank (rules.path_problem); everything else is valid.
    "run.name": st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                        max_size=12).filter(str.strip),
    "run.seed": st.integers(0, 2**32 - 1),  # a seed must fit numpy's legacy RNG
    "run.epochs": st.integers(5, 10**6),  # full.toml starts SWA at epoch 4
    "run.deterministic": st.booleans(),
    "data.batch_size": st.integers(1, 5000).map(lambda n: 2 * n),  # full.toml has [mixup]: an even batch
    "data.num_workers": st.integers(0, 64),
    "data.class_subset": st.lists(_text, max_size=3),
    "data.val_fraction": st.floats(0.01, 0.99),
    "backbone.name": st.sampled_from(["resnet18", "resnet34", "convnext_atto", "efficientnet_b0"]),
    "backbone.drop_rate": st.floats(0.0, 1.0, exclude_max=True),
    "optimizer.lr": _positive,
    "optimizer.momentum": _unit,
    "optimizer.nesterov": st.booleans(),
    "trainer.precision": st.sampled_from(PRECISIONS),
    "trainer.clip_grad_norm": _positive,
    "trainer.grad_accum": st.integers(1, 64),
    # one value per image channel or one for all: full.toml's images have backbone.in_chans = 1 channel
    "augmentations.mean": st.lists(_unit, min_size=1, max_size=1),
    "augmentations.std": st.lists(_positive, min_size=1, max_size=1),
    "augmentations.val": st.lists(_simple_aug, max_size=3),
    "augmentations.train[0].n": st.integers(1, 3),
    "augmentations.train[0].transforms[0].transforms[1].p": _unit,
    f"{ONEOF}.transforms[1].p": _unit,
    f"{ONEOF}.transforms[-2].p": _unit,
    "mixup.prob": _unit,
}


@st.composite
def override_sequences(draw) -> list[tuple[str, Any, str]]:
    keys = draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=8))
    out = []
    for key in keys:
        value = draw(VALID[key])
        out.append((key, value, f"{key}={_toml(draw, value)}"))
    return out


def _canonical(key: str) -> tuple:
    """The key path with ONEOF's negative index made positive (the OneOf holds two transforms)."""
    path = []
    for seg in re.findall(r"[^.\[\]]+|\[-?\d+\]", key):
        path.append(int(seg[1:-1]) if seg.startswith("[") else seg)
    if path[-3:-1] == ["transforms", -2]:
        path[-2] = 0
    return tuple(path)


def _at(d: Any, path: tuple) -> Any:
    for seg in path:
        d = d[seg]
    return d


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("roundtrip")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=override_sequences())
def test_random_valid_overrides_survive_the_printed_round_trip(seq, scratch):
    overrides = [text for _, _, text in seq]
    spec = load_spec(FULL, overrides)
    assert isinstance(spec, RunSpec)
    d = to_dict(spec)
    last = {_canonical(k): v for k, v, _ in seq}
    for path, value in last.items():
        got = _at(d, path)
        assert got == value and type(got) is type(value), (path, got, value)
    printed = dumps(spec)
    out = scratch / "printed.toml"
    out.write_text(printed, encoding="utf-8")
    again = load_spec(out)
    assert again == spec
    assert dumps(again) == printed
