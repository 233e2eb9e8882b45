"""Finer parts of the spec, in-process: the position locator (tomllib gives no positions), syntax-error locations,
annotation checking, and the typed model that the runtime consumes instead of raw dicts."""

from __future__ import annotations

import sys
from typing import Any, Literal

import attrs
import pytest
import tomli_w
from helpers_plugins import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugtrain.core.spec import load_spec, resolve
from plugtrain.core.spec.loader import _walk
from plugtrain.core.spec.model import (
    DEFAULT_METRICS,
    AugmentationSpec,
    ComponentSpec,
    DataSection,
    LossSection,
    MixupSection,
    OptimizerSection,
    RunSection,
    RunSpec,
    TrainerSection,
)
from plugtrain.core.spec.tomlpos import format_path, locate, open_string, unclosed
from plugtrain.core.spec.typecheck import describe, from_annotation, matches, mismatch, toml_view

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# -- the locator -----------------------------------------------------------------------------------------------------

DOC = """\
# a comment with = and [brackets]
top = 1
"quoted key" = 'x = [1'

[data]
dataset = "sklearn-digits"   # trailing comment
a.b.c = 3
text = \"\"\"
multi [line] = "string"
\"\"\"

[augmentations]
train = [
  { name = "OneOf", transforms = [
      { name = "RandomResizedCrop", size = [32, 32] },
      { name = "HorizontalFlip", p = 0.5 },
  ] },
  # a comment between items
  { name = "Affine", rotate = [-10, 10] },
]

[[loggers]]
name = "tensorboard"

[[loggers]]
name = "csv"
[loggers.extra]
k = 1979-05-27 07:32:00Z
after = true
"""


def test_locate_finds_keys_and_values_at_every_depth():
    pos = locate(DOC)
    assert tomllib.loads(DOC)  # the document is valid TOML
    assert pos[("top",)] == (2, 1, 2, 7)
    assert pos[("quoted key",)] == (3, 1, 3, 16)
    assert pos[("data",)][:2] == (5, 1)
    assert pos[("data", "dataset")] == (6, 1, 6, 11)
    assert pos[("data", "a", "b", "c")] == (7, 1, 7, 9)
    assert pos[("data", "a")][:2] == (7, 1)
    assert pos[("data", "text")][:2] == (8, 1)
    aug = ("augmentations", "train")
    assert pos[aug] == (13, 1, 13, 9)
    assert pos[(*aug, 0)][:2] == (14, 3)
    assert pos[(*aug, 0, "transforms", 0, "size")] == (15, 37, 15, 44)
    assert pos[(*aug, 0, "transforms", 0, "size", 1)][:2] == (15, 49)
    assert pos[(*aug, 0, "transforms", 1, "p")] == (16, 34, 16, 38)
    assert pos[(*aug, 1, "rotate")] == (19, 22, 19, 31)
    assert pos[("loggers", 0)][:2] == (22, 1)
    assert pos[("loggers", 0, "name")] == (23, 1, 23, 8)
    assert pos[("loggers", 1, "name")] == (26, 1, 26, 8)
    assert pos[("loggers", 1, "extra", "k")] == (28, 1, 28, 5)
    assert pos[("loggers", 1, "extra", "after")] == (29, 1, 29, 9)  # the date-time with a space was skipped whole


_key = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
_scalar = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
)


def _tree(depth: int = 3) -> st.SearchStrategy:
    leaf = st.one_of(_scalar, st.lists(_scalar, max_size=3))
    if depth == 0:
        return leaf
    sub = st.dictionaries(_key, _tree(depth - 1), max_size=3)
    return st.one_of(leaf, sub, st.lists(sub, min_size=1, max_size=2))


def _token(value: Any) -> str:
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_key, _tree(), min_size=1, max_size=4), multiline=st.booleans())
def test_locate_points_at_every_key_and_scalar_of_any_document(doc, multiline):
    """Property: in any TOML document (tomli_w writes tables, arrays of tables, inline tables, quoted keys, escaped
    and multi-line strings), every key path is located, and each scalar's value position is where its text starts."""
    src = tomli_w.dumps(doc, multiline_strings=multiline)
    assert tomllib.loads(src) == doc
    pos = locate(src)
    lines = src.split("\n")
    for path in _walk(doc, ()):
        if not path:
            continue
        assert path in pos, (path, src)
        p = pos[path]
        value = doc
        for seg in path:
            value = value[seg]
        if isinstance(value, (dict, list)):
            continue
        text = "\n".join(lines[p.value_line - 1 :])[p.value_col - 1 :]
        if isinstance(value, str) and multiline and "\n" in value:
            assert text.startswith('"""'), (path, text[:20])
        else:
            assert text.startswith(_token(value)), (path, text[:40], _token(value))
        if not isinstance(path[-1], int):  # a key: the text at the key position is the key as written
            key_text = lines[p.line - 1][p.col - 1 :]
            assert key_text.startswith(path[-1]) or key_text.startswith(('"', "'")), (path, key_text)


def test_format_path_quotes_odd_keys():
    assert format_path(("augmentations", "train", 1, "transforms", 0, "size")) == \
        "augmentations.train[1].transforms[0].size"
    assert format_path(("data", 'a "b".c')) == 'data."a \\"b\\".c"'


def test_unclosed_brackets_and_strings_are_found_past_strings_and_comments():
    assert unclosed('a = [1, "]", # ]\n  { x = "}" },\n') == (1, 5, "[")
    assert unclosed("a = [1, { b = [2]\n") == (1, 9, "{")
    assert unclosed("a = [1]\n[t]\nb = { c = 1 }\n") is None
    assert unclosed('a = """ [ """\n') is None
    assert open_string('name = "x\\" y') == 8
    assert open_string("name = 'x") == 8
    assert open_string('name = "x" # "') is None
    assert open_string('name = """x') is None


@pytest.mark.parametrize(("text", "where", "fragment"), [
    ('[run]\nname = "x\nepochs = 2\n', "2:8", "this string is never closed"),
    ("[run]\nname = 'x\nepochs = 2\n", "2:8", "this string is never closed"),
    ('[run]\nname = "x"\n[augmentations]\ntrain = [\n  { name = "A" },\n', "4:9", "this array is never closed"),
    ('[run]\nname = "x"\nepochs = 2 3\n', "3:12", "Expected newline or end of document"),
    ('[run]\nname = "x"\n[run]\n', "3:5", "Cannot declare [run] twice"),
    ('[run]\nname = "x"\nname = "y"\n', "3:11", "Cannot overwrite a value"),
    ("[run\n", "1:5", "TOML syntax error"),
])
def test_syntax_errors_are_located(tmp_path, text, where, fragment):
    spec = tmp_path / "s.toml"
    spec.write_text(text, encoding="utf-8")
    res = resolve(spec)
    assert len(res.problems) == 1, res.problems
    assert res.problems[0].startswith(f"{spec}:{where}: TOML syntax error"), res.problems
    assert fragment in res.problems[0]


def test_unreadable_specs_are_one_line_each(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'[run]\nname = "caf\xe9"\n')
    assert resolve(tmp_path / "latin1.toml").problems == [f"{tmp_path / 'latin1.toml'}: not a UTF-8 text file"]
    assert resolve(tmp_path).problems == [f"{tmp_path}: is a directory, not a spec file"]
    assert resolve(tmp_path / "nope.toml").problems == [f"{tmp_path / 'nope.toml'}: no such file"]


# -- annotations -----------------------------------------------------------------------------------------------------


def _t(annotation: Any, ns: dict | None = None):
    return toml_view(from_annotation(annotation, ns or {}))


@pytest.mark.parametrize(("annotation", "good", "bad"), [
    (int, [0, -3], [1.5, True, "1"]),
    (float, [1, 1.5], [True, "1.5"]),
    (bool, [True], [1, "true"]),
    (str, ["x"], [1]),
    ("tuple[int, int]", [[1, 2]], [[1], [1, 2, 3], [1.5, 2], 3]),
    ("tuple[float, ...]", [[], [1, 2.5]], [["a"]]),
    ("float | tuple[float, float]", [1.0, [1, 2]], ["x", [1]]),
    ("int | None", [3], [None, "3"]),
    ("Literal['mean', 'sum']", ["mean"], ["avg", 1]),
    ("list[str] | None", [["a"], []], [[1], "a"]),
    ("dict[str, float]", [{"a": 1.0}], [{"a": "x"}, [1]]),
    ("Sequence[int]", [[1, 2]], [[1.5]]),
    ("Opaque | float", [1.0], ["x"]),  # a class TOML cannot produce, inside a union: never matches
    ("SomeUnknownClass", [1, "x", [1]], []),  # an unknown annotation alone accepts anything
])
def test_values_are_checked_against_annotations(annotation, good, bad):
    class Opaque:
        pass

    t = _t(annotation, {"Opaque": Opaque})
    for v in good:
        assert matches(v, t), (annotation, v)
    for v in bad:
        assert not matches(v, t), (annotation, v)


def test_literal_of_enum_members_and_mismatch_hints():
    import enum

    class Mode(enum.Enum):
        A = "a"
        B = "b"

    t = _t("Literal[Mode.A, Mode.B]", {"Mode": Mode})
    assert matches("a", t) and not matches("c", t)
    assert describe(t) == 'one of "a" (Mode.A), "b" (Mode.B)'
    assert mismatch("3", _t(float)).endswith("write numbers without quotes")
    assert mismatch("false", _t(bool)).endswith("write booleans without quotes: true / false")
    assert mismatch(True, _t(int)).endswith("a boolean is not a number")
    assert mismatch(32, _t("tuple[int, int]")).endswith("write an array of 2, e.g. [32, 32]")
    assert describe(_t(Literal["x", 1])) == 'one of "x", 1'


# -- the typed model -------------------------------------------------------------------------------------------------


def test_the_runtime_gets_typed_objects_not_dicts():
    spec = load_spec(REPO / "tests" / "specs" / "good" / "full.toml")
    assert isinstance(spec, RunSpec)
    assert isinstance(spec.run, RunSection) and spec.run.epochs == 6
    assert isinstance(spec.data, DataSection) and isinstance(spec.data.dataset, ComponentSpec)
    assert spec.data.dataset.name == "sklearn-digits" and spec.data.dataset.params == {"upscale": 4}
    assert isinstance(spec.loss, LossSection) and isinstance(spec.optimizer, OptimizerSection)
    assert spec.optimizer.no_decay_norm_bias is True and "no_decay_norm_bias" not in spec.optimizer.params
    assert isinstance(spec.mixup, MixupSection) and spec.mixup.prob == 0.5
    assert isinstance(spec.trainer, TrainerSection) and spec.trainer.precision == "fp16"
    some_of = spec.augmentations.train[0]
    assert isinstance(some_of, AugmentationSpec) and some_of.params == {"n": 2}
    assert all(isinstance(t, AugmentationSpec) for t in some_of.transforms)
    assert [c.name for c in spec.callbacks] == ["early-stopping"]
    assert spec.primary_metric == "val/accuracy" and spec.mode == "max"
    assert spec.source.endswith("full.toml")
    metric = load_spec(REPO / "tests" / "specs" / "good" / "metric_learning.toml")
    assert metric.loss.optimizer == ComponentSpec("SGD", {"lr": 0.01})
    assert metric.primary_metric == "val/precision_at_1"  # the task's default
    assert [m.name for m in load_spec(REPO / "tests" / "specs" / "good" / "base.toml").metric_specs] == \
        DEFAULT_METRICS["classification"]


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (RunSection, {"name": "x", "epochs": 0}, "epochs must be > 0"),
    (RunSection, {"name": "x", "task": "clustering"}, "task"),
    (DataSection, {"dataset": ComponentSpec("d"), "batch_size": 0}, "batch_size must be > 0"),
    (DataSection, {"dataset": ComponentSpec("d"), "num_workers": -1}, "num_workers must be >= 0"),
    (MixupSection, {"prob": 1.5}, "prob must be in [0, 1]"),
    (TrainerSection, {"precision": "fp64"}, "precision"),
])
def test_the_model_validates_itself_too(cls, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cls(**kwargs)


def test_every_section_field_is_checked_by_the_validator_with_its_annotation():
    """The checker reads the model's own annotations: every field of every plain section has a real type."""
    from plugtrain.core.spec.validate import field_type, section_fields

    for cls in (RunSection, DataSection, MixupSection, TrainerSection, OptimizerSection):
        for name, field in section_fields(cls).items():
            if name in ("dataset", "name"):
                continue
            assert field_type(field).kind != "any", (cls.__name__, name)
    assert attrs.has(RunSpec)
