"""``docs/spec.md`` says what the code does: its tables are the code's (regenerated here), and its claims hold.

The tables between ``generated`` markers are rewritten from the spec model and the registry by
``docs/spec_tables.py``; the document must equal its regeneration (a new key, a changed default or range, a key
gone: this test fails until ``python docs/spec_tables.py --write`` is run and the new key's meaning written). The
examples parse, and the path rules the page states are tried for real.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import attrs
import pytest
from conftest import run_cli, subprocess_env

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "spec.md"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("spec_tables", REPO / "docs" / "spec_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_tables_are_what_the_code_says(tables):
    doc = DOC.read_text(encoding="utf-8")
    assert tables.render(doc) == doc, "docs/spec.md is stale: run `python docs/spec_tables.py --write`"
    assert tables.empty_meanings(doc) == [], "write the meaning of these keys in docs/spec.md"


def test_every_section_and_key_of_the_model_is_in_the_reference(tables):
    from plugtrain.core.spec.model import SECTIONS
    from plugtrain.core.spec.validate import section_fields

    doc = DOC.read_text(encoding="utf-8")
    assert {w.split()[1] for w in tables.blocks(doc) if w.startswith("section ")} == set(SECTIONS)
    for section, (cls, _) in SECTIONS.items():
        block = re.search(rf"<!-- generated: section {section} -->\n(.*?)<!-- end generated -->", doc, re.S).group(1)
        for key, field in section_fields(cls).items():
            assert f"| `{key}` |" in block, f"[{section}] {key} is not documented"
            if field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                shown = "unset" if field.default is None else f"`{tables._toml(field.default)}`"
                assert shown in block.split(f"| `{key}` |", 1)[1].split("\n", 1)[0], (section, key)
    for heading in ("[run]", "[data]", "[backbone]", "[loss]", "[optimizer]", "[scheduler]", "[augmentations]",
                    "[mixup]", "[[loggers]]", "[[metrics]]", "[[callbacks]]", "[trainer]"):
        assert f"## {heading}" in doc, heading
    assert doc.count("**`--dry-run`**") == 1


def test_the_examples_are_toml_and_the_first_is_a_valid_spec(tmp_path):
    from plugtrain.core.spec import load_spec

    doc = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        tomllib.loads(block)
    first = "\n".join(line for line in blocks[0].splitlines() if not line.startswith(("extends", "unset")))
    spec = tmp_path / "first.toml"
    spec.write_text(first)
    assert load_spec(spec).backbone.name == "resnet18"


def test_a_dataset_table_is_refused_with_the_key_it_is_about(tmp_path):
    spec = tmp_path / "table.toml"
    spec.write_text('[run]\nname = "x"\n[data]\ndataset = { name = "imagefolder", root = "data/x" }\n'
                    '[backbone]\nname = "resnet18"\n[loss]\nname = "CrossEntropy"\n[optimizer]\nname = "AdamW"\n')
    proc = run_cli("check", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{spec}:4:11: data.dataset" in proc.stderr
    assert 'write dataset = "imagefolder" and put its parameters (root = ...) beside it in [data]' in proc.stderr


def test_the_path_rules_hold(tmp_path):
    """``extends`` is relative to the spec file; ``output_dir`` and a dataset's ``root`` to the working directory
    (the spec lives in one folder, plugtrain runs in another)."""
    from helpers_datafiles import write_image_folder

    conf, work = tmp_path / "conf", tmp_path / "work"
    conf.mkdir()
    write_image_folder(work / "pics", per_class=12, size=16)
    (conf / "base.toml").write_text(
        '[run]\nname = "paths"\noutput_dir = "out"\nepochs = 1\n'
        '[data]\ndataset = "imagefolder"\nroot = "pics"\nimage_size = 16\nbatch_size = 8\nnum_workers = 0\n'
        '[backbone]\nname = "test_efficientnet"\n[loss]\nname = "CrossEntropy"\n[optimizer]\nname = "AdamW"\n'
        "[trainer]\nmax_steps_per_epoch = 1\n")
    (conf / "child.toml").write_text('extends = "base.toml"\n[optimizer]\nlr = 1e-3\n')
    proc = run_cli("train", conf / "child.toml", cwd=work, env=subprocess_env(PLUGTRAIN_PLAIN="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "out" / "paths" / "checkpoints" / "last.pt").is_file()  # output_dir: the working directory
    assert not (conf / "out").exists()
    train, val = map(int, re.search(r"(\d+) train / (\d+) val samples, 3 classes", proc.stdout).groups())
    assert train + val == 36  # the folder under work/ was read: 3 classes x 12 images
