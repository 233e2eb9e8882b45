"""``extends``: relative to the file, deep-merged (tables key by key, arrays replaced), chainable, cycles caught, and
every problem pointing at the file that holds the bad key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from helpers_plugins import REPO

from plugtrain.core.spec import SpecError, load_spec, resolve, resolve_dict
from plugtrain.core.spec.loader import deep_merge

BASE = """\
[run]
name = "base"
epochs = 4

[data]
dataset = "sklearn-digits"
batch_size = 16
num_workers = 0

[backbone]
name = "resnet18"
in_chans = 1

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = 1e-3
weight_decay = 0.05

[augmentations]
train = [
  { name = "HorizontalFlip", p = 0.5 },
  { name = "VerticalFlip", p = 0.5 },
]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides or [])
    return info.value.problems


def test_deep_merge_merges_tables_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2, 3], "s": "base", "t": {"k": 1}}
    over = {"a": {"y": {"q": 20, "r": 30}}, "l": [9], "t": 5, "new": {"z": 1}}
    assert deep_merge(base, over) == {"a": {"x": 1, "y": {"p": 1, "q": 20, "r": 30}}, "l": [9], "s": "base", "t": 5,
                                      "new": {"z": 1}}
    assert base["a"]["y"] == {"p": 1, "q": 2}  # the inputs are left alone


def test_extends_is_relative_to_the_file_not_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "configs" / "shared" / "base.toml", BASE)
    child = write(tmp_path / "configs" / "exp" / "child.toml", """\
        extends = "../shared/base.toml"
        [run]
        name = "child"
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(os.path.relpath(child))
    assert spec.run.name == "child" and spec.run.epochs == 4 and spec.backbone.name == "resnet18"


def test_extends_deep_merges_tables_and_replaces_arrays(tmp_path):
    write(tmp_path / "base.toml", BASE)
    child = write(tmp_path / "child.toml", """\
        extends = "base.toml"

        [data]
        batch_size = 64

        [optimizer]
        lr = 0.01

        [augmentations]
        train = [{ name = "Transpose" }]

        [trainer]
        precision = "bf16"
    """)
    d = resolve_dict(child)
    assert "extends" not in d
    assert d["data"] == {"dataset": "sklearn-digits", "batch_size": 64, "num_workers": 0}
    assert d["optimizer"] == {"name": "AdamW", "lr": 0.01, "weight_decay": 0.05}
    assert d["augmentations"]["train"] == [{"name": "Transpose"}]  # an array is replaced, never merged
    spec = load_spec(child)
    assert spec.trainer.precision == "bf16" and spec.run.name == "base"


def test_extends_chains_and_the_most_derived_file_wins(tmp_path):
    write(tmp_path / "a.toml", BASE)
    write(tmp_path / "b" / "b.toml", """\
        extends = "../a.toml"
        [run]
        name = "b"
        epochs = 6
        [optimizer]
        lr = 0.5
    """)
    c = write(tmp_path / "c.toml", """\
        extends = "b/b.toml"
        [run]
        epochs = 8
    """)
    res = resolve(c)
    assert not res.problems
    assert res.files == [str(c), str(tmp_path / "b" / "b.toml"), str(tmp_path / "a.toml")]
    spec = load_spec(c)
    assert (spec.run.name, spec.run.epochs, spec.optimizer.params["lr"]) == ("b", 8, 0.5)
    assert spec.data.batch_size == 16


def test_the_repository_chain_of_good_specs():
    spec = load_spec(REPO / "tests" / "specs" / "good" / "deeper" / "grandchild.toml")
    assert spec.run.name == "good-child" and spec.run.epochs == 5  # child's name, grandchild's epochs
    assert spec.data.dataset.params == {"val_fraction": 0.25}  # base's dataset parameter
    assert spec.optimizer.params == {"lr": 1e-3, "weight_decay": 0.05}  # child's lr over base's
    assert [t.name for t in spec.augmentations.train[0].transforms] == ["RandomResizedCrop", "RandomRotate90"]
    assert spec.trainer.precision == "bf16" and spec.trainer.grad_accum == 2


@pytest.mark.parametrize("layout", ["self", "pair", "behind"])
def test_an_extends_cycle_is_reported_at_the_extends_that_closes_it(tmp_path, layout):
    if layout == "self":
        top = write(tmp_path / "a.toml", 'extends = "a.toml"\n')
        closing, chain = top, ["a.toml", "a.toml"]
    elif layout == "pair":
        top = write(tmp_path / "a.toml", 'extends = "sub/b.toml"\n')
        closing = write(tmp_path / "sub" / "b.toml", '# b\nextends = "../a.toml"\n')
        chain = ["a.toml", "b.toml", "a.toml"]
    else:  # the cycle does not go through the spec named on the command line
        top = write(tmp_path / "top.toml", 'extends = "a.toml"\n')
        write(tmp_path / "a.toml", 'extends = "b.toml"\n')
        closing = write(tmp_path / "b.toml", '\n\nextends   =   "./a.toml"\n')
        chain = ["top.toml", "a.toml", "b.toml", "a.toml"]
    probs = problems(top)
    assert len(probs) == 1
    line = 1 if layout == "self" else 2 if layout == "pair" else 3
    col = {"self": 11, "pair": 11, "behind": 15}[layout]
    assert probs[0].startswith(f"{closing}:{line}:{col}: extends cycle: ")
    assert [Path(p).name for p in probs[0].split("extends cycle: ")[1].split(" -> ")] == chain


def test_a_missing_extends_file_is_located_and_suggests_a_sibling(tmp_path):
    write(tmp_path / "base.toml", BASE)
    child = write(tmp_path / "child.toml", '# the base\nextends = "bsae.toml"\n')
    assert problems(child) == [f"{child}:2:11: extends 'bsae.toml': no such file '{tmp_path / 'bsae.toml'}'. "
                               "Did you mean 'base.toml'?"]


@pytest.mark.parametrize(("value", "where"), [("3", "2:11"), ('""', "2:11"), ("[\"a.toml\"]", "2:11")])
def test_extends_must_be_a_path(tmp_path, value, where):
    child = write(tmp_path / "child.toml", f"# x\nextends = {value}\n")
    probs = problems(child)
    assert len(probs) == 1 and probs[0].startswith(f"{child}:{where}: extends must be the path of another spec file")


def test_extends_of_a_directory_or_a_broken_file_is_an_error_in_that_file(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    child = write(tmp_path / "child.toml", 'extends = "dir.toml"\n')
    assert problems(child) == [f"{child}:1:11: extends 'dir.toml': '{tmp_path / 'dir.toml'}' is a directory, not a "
                               "spec file; name a .toml file in it"]
    child = write(tmp_path / "dot.toml", 'extends = "."\n')
    assert problems(child) == [f"{child}:1:11: extends '.': '{tmp_path}' is a directory, not a spec file; name a "
                               ".toml file in it"]
    write(tmp_path / "broken.toml", '[run]\nname = "x"\nepochs = = 3\n')
    child = write(tmp_path / "child2.toml", 'extends = "broken.toml"\n')
    probs = problems(child)
    assert len(probs) == 1 and probs[0].startswith(f"{tmp_path / 'broken.toml'}:3:10: TOML syntax error")


def test_errors_point_at_the_file_that_holds_the_bad_key(tmp_path):
    base = write(tmp_path / "base.toml", BASE.replace("weight_decay = 0.05", "weight_decay = 0.05\nmomentom = 0.9")
                 .replace("epochs = 4", "epochs = 0"))
    mid = write(tmp_path / "mid.toml", """\
        extends = "base.toml"
        [data]
        batch_size = -1
    """)
    leaf = write(tmp_path / "leaf.toml", """\
        extends = "mid.toml"

        [backbone]
        drop_rate = 1.5
    """)
    found = problems(leaf)
    # the range message's wording belongs to the type checker: only its place and its numbers are pinned here
    assert found[0].startswith(f"{leaf}:4:13: backbone.drop_rate") and found[0].endswith("must be in [0, 1), got 1.5")
    assert found[1:] == [
        f"{mid}:3:14: data.batch_size must be > 0, got -1",
        f"{base}:3:10: run.epochs must be > 0, got 0",
        f"{base}:21:1: unknown key 'momentom' in [optimizer] (optimizer 'AdamW'). Accepted: no_decay_norm_bias, layer_decay, lr, "
        "betas, eps, weight_decay, amsgrad, maximize, foreach, capturable, differentiable, fused.",
    ]


def test_a_derived_file_fixes_a_bad_value_of_its_base_and_a_replaced_array_forgets_the_base_items(tmp_path):
    base = write(tmp_path / "base.toml", BASE.replace("epochs = 4", "epochs = 0").replace(
        '{ name = "VerticalFlip", p = 0.5 }', '{ name = "VerticalFlip", p = 5.0 }'))
    assert len(problems(base)) == 2
    child = write(tmp_path / "child.toml", """\
        extends = "base.toml"
        [run]
        epochs = 2
        [augmentations]
        train = [
          { name = "Transpose" },
          { name = "RandomRotate90", p = -1.0 },
        ]
    """)
    # the base's bad epochs and bad VerticalFlip are gone; the new array's item is located in the child
    assert problems(child) == [f"{child}:7:34: augmentations.train[1].p must be in [0, 1], got -1.0"]


def test_a_missing_required_section_is_reported_at_the_spec_given(tmp_path):
    write(tmp_path / "partial.toml", '[run]\nname = "p"\n')
    child = write(tmp_path / "child.toml", 'extends = "partial.toml"\n[backbone]\nname = "resnet18"\n')
    probs = problems(child)
    assert probs == [f"{child}:1:1: missing required section [{s}]" for s in ("data", "optimizer")]


def test_overrides_apply_after_extends(tmp_path):
    write(tmp_path / "base.toml", BASE)
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[optimizer]\nlr = 0.2\n')
    spec = load_spec(child, ["optimizer.lr=0.3", "augmentations.train[1].p=0.1"])
    assert spec.optimizer.params["lr"] == 0.3
    assert spec.augmentations.train[1].params == {"p": 0.1}
    probs = problems(child, ["augmentations.train[1].p=1.1"])
    assert probs == [f"{child}: --set augmentations.train[1].p=1.1: augmentations.train[1].p must be in [0, 1], "
                     "got 1.1"]


# -- issue 13 item 7: a child that names another component, and deleting an inherited key ----------------------------
def test_a_child_that_switches_the_optimizer_drops_the_parents_parameters_and_trains(tmp_path, capsys):
    """AdamW's weight_decay (decoupled, 0.05) must not become SGD's L2 penalty: switching ``name`` drops what the
    parent wrote for the old component; ``check --print`` says so in a note line; the spec trains."""
    from conftest import cli

    write(tmp_path / "base.toml", BASE.replace('name = "base"', f'name = "base"\noutput_dir = "{tmp_path}/runs"')
          .replace("num_workers = 0", "num_workers = 0\nimage_size = 16")
          .replace('name = "resnet18"', 'name = "test_efficientnet"')
          .replace("weight_decay = 0.05", "weight_decay = 0.05\nbetas = [0.9, 0.99]"))
    child = write(tmp_path / "child.toml", """\
        extends = "base.toml"

        [run]
        name = "sgd"
        epochs = 1

        [optimizer]
        name = "SGD"
        lr = 0.1
        momentum = 0.9

        [trainer]
        max_steps_per_epoch = 1
    """)
    res = resolve(child)
    assert res.problems == []  # SGD has no betas: inherited, it would be an unknown key
    assert res.data["optimizer"] == {"name": "SGD", "lr": 0.1, "momentum": 0.9}
    assert res.notes == [f"[optimizer] name 'AdamW' (from {tmp_path / 'base.toml'}) becomes 'SGD' in {child}: the "
                         "parameters written for 'AdamW' are not inherited (weight_decay, betas dropped; lr set "
                         "again here)"]
    capsys.readouterr()
    assert cli("check", "--print", child) == 0
    printed = capsys.readouterr().out
    body = "\n".join(line for line in printed.splitlines() if not line.startswith("#"))
    assert f"# note: {res.notes[0]}\n" in printed and "weight_decay" not in body and "betas" not in body
    assert load_spec(child).optimizer.params == {"lr": 0.1, "momentum": 0.9}
    assert cli("train", child) == 0
    assert (tmp_path / "runs" / "sgd" / "checkpoints" / "last.pt").is_file()


def test_a_switched_table_keeps_its_own_keys_and_what_the_child_repeats(tmp_path):
    write(tmp_path / "base.toml", BASE + '\n[scheduler]\nname = "CosineAnnealingLR"\nT_max = 5\nwarmup_epochs = 1\n')
    child = write(tmp_path / "child.toml", """\
        extends = "base.toml"

        [data]
        dataset = "imagefolder"
        root = "images"

        [optimizer]
        name = "SGD"
        weight_decay = 0.05

        [scheduler]
        name = "StepLR"
        step_size = 2
    """)
    d = resolve(child, validate=False).data
    assert d["optimizer"] == {"name": "SGD", "weight_decay": 0.05}  # repeated: kept; lr: AdamW's, dropped
    assert d["scheduler"] == {"name": "StepLR", "warmup_epochs": 1, "step_size": 2}  # warmup is [scheduler]'s own
    assert d["data"] == {"dataset": "imagefolder", "batch_size": 16, "num_workers": 0, "root": "images"}
    same = write(tmp_path / "same.toml", 'extends = "base.toml"\n[optimizer]\nname = "AdamW"\nlr = 0.5\n')
    assert resolve(same).data["optimizer"] == {"name": "AdamW", "lr": 0.5, "weight_decay": 0.05}  # no switch
    assert resolve(same).notes == []


def test_set_edits_one_key_and_keeps_the_parameters_of_a_switched_name(tmp_path):
    """``--set backbone.name=...`` changes that key only (in_chans stays): the switch rule is extends's."""
    base = write(tmp_path / "base.toml", BASE)
    d = resolve(base, ['backbone.name="resnet10t"']).data
    assert d["backbone"] == {"name": "resnet10t", "in_chans": 1}


def test_unset_deletes_inherited_keys_and_sections(tmp_path, capsys):
    from conftest import cli

    write(tmp_path / "base.toml", BASE + '\n[scheduler]\nname = "CosineAnnealingLR"\nwarmup_epochs = 1\n')
    child = write(tmp_path / "child.toml", """\
        extends = "base.toml"
        unset = ["optimizer.weight_decay", "scheduler", "augmentations.train"]

        [optimizer]
        lr = 0.5
    """)
    spec = load_spec(child)
    assert spec.optimizer.params == {"lr": 0.5} and spec.scheduler is None and spec.augmentations.train == []
    capsys.readouterr()
    assert cli("check", "--print", child) == 0
    printed = capsys.readouterr().out
    body = "\n".join(line for line in printed.splitlines() if not line.startswith("#"))
    assert "weight_decay" not in body and "[scheduler]" not in body and "HorizontalFlip" not in body
    assert f"# note: {child}: unset optimizer.weight_decay (inherited from {tmp_path / 'base.toml'})" in printed
    # the printed spec is itself a spec that loads to the same run
    again = write(tmp_path / "printed.toml", "\n".join(printed.splitlines()))
    assert load_spec(again) == spec
