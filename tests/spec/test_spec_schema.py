"""``plugtrain schema``: a JSON Schema of the run spec that a real external client, taplo, validates specs with.

The schema holds each component kind's names as an enum and each component's parameters as properties taken from its
signature, plugins included (the example plugin is installed here the way pip leaves it: a ``*.dist-info`` whose
entry point names its module). CI's check of ``specs/`` is :func:`test_taplo_validates_every_shipped_and_good_spec`:
``taplo check --schema`` on every file in ``specs/`` with the schema that ``plugtrain schema`` printed.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_plugins import REPO, make_example_dist, run_plugtrain

from plugtrain.core.registry import get_registry, reset_registry
from plugtrain.core.spec.schema import build_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TAPLO = Path(sys.executable).parent / "taplo"
SPECS = REPO / "tests" / "specs"
SHIPPED = sorted((REPO / "specs").glob("*.toml"))
GOOD = sorted((SPECS / "good").rglob("*.toml"))

pytestmark = pytest.mark.skipif(not TAPLO.exists() and shutil.which("taplo") is None, reason="taplo is not installed")


def taplo_bin() -> str:
    return str(TAPLO) if TAPLO.exists() else shutil.which("taplo")


@pytest.fixture(scope="module")
def example_paths(tmp_path_factory) -> list[Path]:
    """The example plugin installed under a temporary folder: the paths to put on sys.path / PYTHONPATH."""
    from helpers_plugins import EXAMPLE_PLUGIN_SRC

    return [make_example_dist(tmp_path_factory.mktemp("example")), EXAMPLE_PLUGIN_SRC]


@pytest.fixture(scope="module")
def registry(example_paths):
    """The process-wide registry with the example plugin installed (and without it again afterwards)."""
    saved = list(sys.path)
    sys.path[:0] = [str(p) for p in example_paths]
    importlib.invalidate_caches()
    reset_registry()
    try:
        yield get_registry()
    finally:
        sys.path[:] = saved
        importlib.invalidate_caches()
        reset_registry()


@pytest.fixture(scope="module")
def schema(registry) -> dict:
    return build_schema(registry)


@pytest.fixture(scope="module")
def cli_schema(example_paths, tmp_path_factory) -> Path:
    """What `plugtrain schema` prints with the example plugin installed, saved to a file for taplo."""
    proc = run_plugtrain("schema", paths=example_paths)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path_factory.mktemp("schema") / "plugtrain.schema.json"
    out.write_text(proc.stdout)
    return out


def taplo(*args: str, cwd: Path = REPO, config: bool = False) -> subprocess.CompletedProcess:
    """``taplo check ARGS`` (no network: no catalogs; the repository's .taplo.toml only when ``config``)."""
    cmd = [taplo_bin(), "check", *([] if config else ["--no-auto-config"]), *args]
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


# -- the schema's content (in-process) -----------------------------------------------------------------------------


def _groups(component_schema: dict, name_key: str = "name") -> dict[str, dict]:
    """name -> the ``then`` properties of the group that validates that component's parameters."""
    out = {}
    for group in component_schema.get("allOf", []):
        for name in group["if"]["properties"][name_key]["enum"]:
            out[name] = group["then"]
    return out


def test_component_names_are_enums_per_kind_plugins_included(schema, registry):
    props = schema["properties"]
    where = {"backbones": props["backbone"], "losses": props["loss"], "optimizers": props["optimizer"],
             "schedulers": props["scheduler"], "augmentations": schema["definitions"]["augmentation"],
             "loggers": schema["definitions"]["loggers"], "metrics": schema["definitions"]["metrics"],
             "callbacks": schema["definitions"]["callbacks"]}
    for kind, s in where.items():
        enum = s["properties"]["name"]["enum"]
        assert set(enum) == {c.name for c in registry.components(kind)}, kind
        assert len(enum) == len(set(enum))
    datasets = props["data"]["properties"]["dataset"]["enum"]
    assert set(datasets) == {c.name for c in registry.components("datasets")}
    assert "example-tinycnn" in props["backbone"]["properties"]["name"]["enum"]
    assert "resnet18" in props["backbone"]["properties"]["name"]["enum"]
    assert "example-focal" in props["loss"]["properties"]["name"]["enum"]
    assert "example-jsonl" in schema["definitions"]["loggers"]["properties"]["name"]["enum"]
    assert "`plugtrain list backbones`" in props["backbone"]["properties"]["name"]["description"]


def test_component_parameters_are_properties_from_the_signature(schema):
    props = schema["properties"]
    tiny = _groups(props["backbone"])["example-tinycnn"]
    assert tiny["additionalProperties"] is False
    assert tiny["properties"]["width"]["type"] == "integer"
    assert tiny["properties"]["width"]["default"] == 16
    assert tiny["properties"]["in_chans"]["type"] == "integer"
    assert tiny["properties"]["in_chans"]["minimum"] == 1  # the spec's range rule for in_chans
    assert "num_classes" not in tiny["properties"]  # a context argument: never set from a spec
    focal = _groups(props["loss"])["example-focal"]["properties"]
    assert focal["reduction"]["enum"] == ["mean", "sum", "none"]
    assert focal["gamma"]["type"] == "number"
    assert focal["gamma"]["minimum"] == 0  # Annotated[float, Ge(0)] in the plugin's signature
    assert focal["gamma"]["description"] == "float >= 0 (default 2.0)"
    assert focal["alpha"]["type"] == "number"  # float | None: TOML has no null
    resnet = _groups(props["backbone"])["resnet18"]["properties"]
    assert {"in_chans", "pretrained", "drop_rate"} <= set(resnet)
    assert resnet["drop_rate"] == {**resnet["drop_rate"], "type": "number", "minimum": 0, "exclusiveMaximum": 1}
    adamw = _groups(props["optimizer"])["AdamW"]["properties"]
    assert adamw["lr"]["exclusiveMinimum"] == 0
    assert adamw["betas"]["type"] == "array" and adamw["betas"]["minItems"] == adamw["betas"]["maxItems"] == 2
    assert adamw["no_decay_norm_bias"] is True  # the section's own key, allowed beside the parameters ...
    assert props["optimizer"]["properties"]["no_decay_norm_bias"]["type"] == "boolean"  # ... and typed once
    aug = _groups(schema["definitions"]["augmentation"])
    assert aug["HorizontalFlip"]["properties"]["p"]["minimum"] == 0
    assert aug["HorizontalFlip"]["properties"]["p"]["maximum"] == 1
    assert aug["OneOf"]["properties"]["transforms"]["items"] == {"$ref": "#/definitions/augmentation"}
    ds = _groups(props["data"], "dataset")["sklearn-digits"]["properties"]
    assert ds["upscale"]["type"] == "integer"
    assert props["data"]["properties"]["batch_size"]["exclusiveMinimum"] == 0


def test_plain_sections_are_closed_and_typed(schema):
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert props["run"]["additionalProperties"] is False
    assert props["run"]["properties"]["epochs"]["exclusiveMinimum"] == 0
    assert {"classification", "regression", "metric_learning"} <= set(props["run"]["properties"]["task"]["enum"])
    assert props["trainer"]["properties"]["precision"]["enum"] == ["fp32", "fp16", "bf16"]
    assert props["data"]["properties"]["num_workers"]["minimum"] == 0
    assert props["mixup"]["properties"]["prob"] == {**props["mixup"]["properties"]["prob"], "minimum": 0, "maximum": 1}
    complete = schema["definitions"]["complete"]
    # no [loss]: the task gives a default loss (run.task's default_loss), so a spec may leave it out
    assert complete["required"] == ["run", "data", "backbone", "optimizer"]
    assert "loss" in props and "task" in props
    assert schema["if"] == {"required": ["extends"]}  # a spec that extends another may leave sections to it


def test_cli_prints_the_schema_of_the_installed_plugins(cli_schema, schema):
    assert json.loads(cli_schema.read_text()) == schema


# -- taplo: a real external client ---------------------------------------------------------------------------------


def test_taplo_validates_every_shipped_and_good_spec(cli_schema, tmp_path):
    """CI: every file in specs/ (and the good corpus) is valid against the generated schema, according to taplo."""
    files = [str(p.relative_to(REPO)) for p in SHIPPED + GOOD]
    proc = taplo("--schema", cli_schema.as_uri(), *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the same run with one bad file more fails, on that file only: taplo really validates what it is given
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC_HEAD.replace('"resnet18"', '"resnet19"'))
    proc = taplo("--schema", cli_schema.as_uri(), *files, str(bad))
    assert proc.returncode != 0
    assert '"resnet19" is not one of' in proc.stdout + proc.stderr


SPEC_HEAD = """\
[run]
name = "taplo"

[data]
dataset = "sklearn-digits"

[backbone]
name = "resnet18"

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
"""

#: name -> (spec text, what taplo must say): each is a spec that plugtrain check rejects too.
TAPLO_REJECTS = {
    "unknown_backbone": (SPEC_HEAD.replace('"resnet18"', '"resnet19"'), '"resnet19" is not one of'),
    "unknown_dataset": (SPEC_HEAD.replace('"sklearn-digits"', '"digits"'), '"digits" is not one of'),
    "wrong_type": (SPEC_HEAD + 'lr = "3e-4"\n', '"3e-4" is not of type "number"'),
    "out_of_range": (SPEC_HEAD + "lr = 0\n", "0 is less than or equal to the minimum of 0"),
    "unknown_param": (SPEC_HEAD + "momentum = 0.9\n", "'momentum' was unexpected"),
    "unknown_section": (SPEC_HEAD + "[traner]\n", "'traner' was unexpected"),
    "literal": (SPEC_HEAD + '[trainer]\nprecision = "fp64"\n', '"fp64" is not one of'),
    "missing_section": (SPEC_HEAD.split("[optimizer]")[0], '"optimizer" is a required property'),
    "nested_p": (SPEC_HEAD + '[augmentations]\ntrain = [{ name = "SomeOf", transforms = [{ name = "Sequential", '
                 'transforms = [{ name = "OneOf", transforms = [{ name = "HorizontalFlip", p = 1.5 }] }] }] }]\n',
                 "1.5 is greater than the maximum of 1"),
    "nested_name": (SPEC_HEAD + '[augmentations]\ntrain = [{ name = "OneOf", transforms = [{ name = "Flip" }] }]\n',
                    '"Flip" is not one of'),
    "nested_required": (SPEC_HEAD + '[augmentations]\ntrain = [{ name = "OneOf", transforms = '
                        '[{ name = "RandomResizedCrop" }] }]\n', '"size" is a required property'),
    "plugin_param_type": (SPEC_HEAD.replace('"resnet18"', '"example-tinycnn"\nwidth = "wide"'),
                          '"wide" is not of type "integer"'),
    "plugin_param_range": (SPEC_HEAD.replace('"CrossEntropy"', '"example-focal"\ngamma = -1'),
                           "-1 is less than the minimum of 0"),
    "builtin_annotated_range": (SPEC_HEAD + '[scheduler]\nname = "OneCycleLR"\npct_start = 1.0\n',
                                "1.0 is greater than or equal to the maximum of 1"),
    "plugin_param_unknown": (SPEC_HEAD.replace('"resnet18"', '"example-tinycnn"\ndrop_rate = 0.1'),
                             "'drop_rate' was unexpected"),
    "context_param": (SPEC_HEAD.replace('"resnet18"', '"resnet18"\nnum_classes = 3'), "'num_classes' was unexpected"),
    "logger": (SPEC_HEAD + '[[loggers]]\nname = "tensorbord"\n', '"tensorbord" is not one of'),
}


def test_taplo_accepts_the_valid_variants(cli_schema, tmp_path):
    """The specs the rejections below start from are valid, so each rejection is about its one mistake."""
    ok = {
        "head": SPEC_HEAD,
        "plugin": SPEC_HEAD.replace('"resnet18"', '"example-tinycnn"\nwidth = 8').replace(
            '"CrossEntropy"', '"example-focal"\nreduction = "sum"'),
        "nested": SPEC_HEAD + '[augmentations]\ntrain = [{ name = "SomeOf", n = 1, transforms = [{ name = '
                              '"Sequential", transforms = [{ name = "OneOf", transforms = [{ name = "HorizontalFlip", '
                              'p = 0.5 }, { name = "RandomResizedCrop", size = [8, 8] }] }] }] }]\n',
        "partial_with_extends": 'extends = "base.toml"\n[optimizer]\nlr = 0.1\n',
    }
    for name, text in ok.items():
        (tmp_path / f"{name}.toml").write_text(text)
    proc = taplo("--schema", cli_schema.as_uri(), *[f"{n}.toml" for n in ok], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(TAPLO_REJECTS))
def test_taplo_rejects_a_bad_spec_with_the_schema(case, cli_schema, tmp_path):
    text, message = TAPLO_REJECTS[case]
    spec = tmp_path / f"{case}.toml"
    spec.write_text(text)
    proc = taplo("--schema", cli_schema.as_uri(), spec.name, cwd=tmp_path)
    assert proc.returncode != 0, f"taplo accepted {case}:\n{text}"
    assert message in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_schema_comment_in_the_spec_is_enough_for_taplo(cli_schema, tmp_path):
    """Editors (Even Better TOML) and taplo read a first-line ``#:schema`` comment, relative to the spec."""
    shutil.copy(cli_schema, tmp_path / "plugtrain.schema.json")
    good = tmp_path / "good.toml"
    good.write_text("#:schema ./plugtrain.schema.json\n" + SPEC_HEAD)
    bad = tmp_path / "bad.toml"
    bad.write_text("#:schema ./plugtrain.schema.json\n" + SPEC_HEAD + "lr = -1.0\n")
    assert taplo(good.name, cwd=tmp_path).returncode == 0
    proc = taplo(bad.name, cwd=tmp_path)
    assert proc.returncode != 0 and "minimum of 0" in proc.stdout + proc.stderr


def test_the_repository_taplo_config_validates_specs_with_the_generated_schema(cli_schema, tmp_path):
    """`.taplo.toml` as documented: `plugtrain schema > build/plugtrain.schema.json`, then plain `taplo check`."""
    shutil.copy(REPO / ".taplo.toml", tmp_path / ".taplo.toml")
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    (tmp_path / "build").mkdir()
    shutil.copy(cli_schema, tmp_path / "build" / "plugtrain.schema.json")
    proc = taplo(cwd=tmp_path, config=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "found configuration file" in proc.stderr
    (tmp_path / "specs" / "zz-bad.toml").write_text(SPEC_HEAD.replace('"resnet18"', '"resnet19"'))
    proc = taplo(cwd=tmp_path, config=True)
    assert proc.returncode != 0 and '"resnet19" is not one of' in proc.stdout + proc.stderr


# -- a plugin's components: taplo and `plugtrain check` agree -------------------------------------------------------


@pytest.fixture(scope="module")
def clash_registry(tmp_path_factory):
    """Built-ins plus two plugins that both register a loss ``Shared`` and one whose loss takes context and
    ``**kwargs``: a Registry of their real entry points (the process-wide one is left alone)."""
    import importlib.metadata

    from helpers_plugins import build_plugin_dists

    from plugtrain.core import hookspecs
    from plugtrain.core.registry import Registry

    dists = build_plugin_dists(tmp_path_factory.mktemp("plugins"))
    paths = [str(p) for p in dists["clash"] + dists["context"]]
    saved = list(sys.path)
    sys.path[:0] = paths
    try:
        eps = [ep for ep in importlib.metadata.distribution("plugtrain").entry_points
               if ep.group == hookspecs.ENTRY_POINT_GROUP]
        for dist in importlib.metadata.distributions(path=paths):
            eps += [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
        registry = Registry(entry_points=eps, warn=lambda _: None)
        registry.components("losses")  # import the plugin modules while they are on the path
        yield registry
    finally:
        sys.path[:] = saved


LOSSES = {  # loss table -> whether it is valid
    '{ name = "clasha:Shared", alpha = 2 }': True,
    '{ name = "clashb:Shared", beta = 2.5 }': True,
    '{ name = "clashb:Shared", alpha = 2 }': False,  # alpha is plugin A's parameter
    '{ name = "Shared" }': False,  # ambiguous: check says which to write, the schema lists only the qualified names
    '{ name = "ctx-loss", scale = 1.0, mode = "b" }': True,
    '{ name = "ctx-loss" }': False,  # scale is required
    '{ name = "ctx-loss", scale = 1.0, mode = "c" }': False,
    '{ name = "ctx-loss", scale = 1.0, num_classes = 3 }': False,  # context: supplied at run time
    '{ name = "kwargs-loss", anything = [1, "a"] }': True,  # **kwargs takes any key
    '{ name = "kwargs-loss", weight = "heavy" }': False,
}


def test_taplo_and_check_agree_on_plugin_parameters(clash_registry, tmp_path):
    from plugtrain.core.spec.validate import validate

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(build_schema(clash_registry)))
    head = tomllib.loads(SPEC_HEAD)
    for i, (table, valid) in enumerate(LOSSES.items()):
        loss = tomllib.loads(f"loss = {table}")["loss"]
        by_check = [p.message for p in validate({**head, "loss": loss}, clash_registry) if not p.warning]
        assert (not by_check) is valid, (table, by_check)
        spec = tmp_path / f"loss{i}.toml"
        spec.write_text(f"loss = {table}\n" + SPEC_HEAD.replace('[loss]\nname = "CrossEntropy"\n', ""))
        proc = taplo("--schema", schema_file.as_uri(), spec.name, cwd=tmp_path)
        assert (proc.returncode == 0) is valid, (table, proc.stdout + proc.stderr)
