"""What a run started from: env.json's ``start_weights`` and the start line, and ``list backbones --pretrained``.

The hub weights come from a huggingface_hub cache built on disk (``helpers_hub.hub_cache``) under a temporary
``HF_HOME``, read with ``HF_HUB_OFFLINE=1``: no network. The tiny spec trains a 10-class, 1-channel model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, subprocess_env, tiny_spec
from helpers_hub import hub_cache, perturbed_model

FINETUNED = "plugtrain-test/tinynet"  # 10 classes, 1 channel: loads whole
DEFAULT_ID = "timm/test_efficientnet.r160_in1k"  # what `pretrained = true` means: 1000 classes, RGB
FINETUNED_COMMIT = "1111111111111111111111111111111111111111"
DEFAULT_COMMIT = "2222222222222222222222222222222222222222"


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    hub_cache(home, FINETUNED, perturbed_model("test_efficientnet", seed=3, num_classes=10, in_chans=1),
              commit=FINETUNED_COMMIT)
    hub_cache(home, DEFAULT_ID, perturbed_model("test_efficientnet", seed=4), commit=DEFAULT_COMMIT)
    return home


def offline(hf_home: Path) -> dict[str, str]:
    out = subprocess_env(HF_HOME=str(hf_home), PLUGTRAIN_PLAIN="1", HF_HUB_OFFLINE="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        out.pop(key, None)
    return out


BUILD = """
import json, sys
from plugtrain.core.registry import get_registry
comp = get_registry().get("backbones", "test_efficientnet")
for pretrained in json.loads(sys.argv[1]):
    model = comp.build({"in_chans": 1, "pretrained": pretrained}, num_classes=10)
    print(json.dumps(model.plugtrain_start_weights))
"""


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory) -> tuple[Path, str]:
    """A safetensors file of a 10-class RGB model (only the stem needs adapting) and its SHA-256 by hashlib."""
    from safetensors.torch import save_file

    weights = tmp_path_factory.mktemp("weights") / "rgb-10.safetensors"
    model = perturbed_model("test_efficientnet", seed=5, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights, hashlib.sha256(weights.read_bytes()).hexdigest()


def expected(weights: Path, digest: str) -> dict[str, tuple[dict, str]]:
    """``{pretrained: (fields start_weights must have, the start line)}`` for the three sources."""
    return {
        f"hf-hub:{FINETUNED}": (
            {"source": f"hf-hub:{FINETUNED}", "repo": FINETUNED, "revision": FINETUNED_COMMIT,
             "requested_revision": None, "file": "model.safetensors", "classifier_reset": False,
             "first_conv_adapted": False, "num_classes": 10, "in_chans": 1},
            f"start weights: hf-hub:{FINETUNED}@{FINETUNED_COMMIT} (file model.safetensors); classifier loaded"),
        "true": (
            {"source": f"hf-hub:{DEFAULT_ID}", "repo": DEFAULT_ID, "revision": DEFAULT_COMMIT,
             "file": "model.safetensors", "classifier_reset": True, "first_conv_adapted": True},
            f"start weights: hf-hub:{DEFAULT_ID}@{DEFAULT_COMMIT} (file model.safetensors); classifier reset "
            "(10 classes); first conv adapted to 1 channel"),
        str(weights): (
            {"source": str(weights), "path": str(weights), "sha256": digest, "classifier_reset": False,
             "first_conv_adapted": True},
            f"start weights: {weights} (sha256 {digest[:16]}); classifier loaded; first conv adapted to 1 channel"),
    }


def fits(record: dict, want: dict) -> None:
    assert {k: record.get(k, "<absent>") for k in want} == want
    if "sha256" in want:
        assert "repo" not in record and "revision" not in record


def test_the_built_backbone_says_what_it_loaded(hf_home, local_weights):
    """Hub weights: the repository, the commit the cache resolved and the file; a local file: its path and SHA-256;
    whether the classifier was reset and the stem adapted."""
    cases = expected(*local_weights)
    sources = [True if p == "true" else p for p in cases]
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps([*sources, None])], capture_output=True,
                          text=True, timeout=300, env=offline(hf_home))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    for record, (want, line) in zip(records, cases.values(), strict=False):
        fits(record, want)
        assert f"start weights: {record['summary']}" == line
    assert records[-1] is None  # no pretrained weights: nothing to record


@pytest.mark.slow
def test_env_json_and_the_start_line_record_the_start_weights(hf_home, local_weights, tmp_path):
    """A queue of real runs: each env.json holds ``start_weights`` and each start prints its line; a run from
    scratch records null and prints none; a resume keeps the first record and prints none."""
    cases = expected(*local_weights)
    specs = [tiny_spec(tmp_path, f"run{i}", tmp_path / "runs", epochs=1, steps=1,
                       backbone_params=f"pretrained = {p if p == 'true' else json.dumps(p)}")
             for i, p in enumerate(cases)]
    specs.append(tiny_spec(tmp_path, "scratch", tmp_path / "runs", epochs=1, steps=1))
    proc = run_cli("train", *specs, env=offline(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("start weights:")]
    assert lines == [line for _, line in cases.values()]
    for i, (want, _) in enumerate(cases.values()):
        fits(json.loads((tmp_path / "runs" / f"run{i}" / "env.json").read_text())["start_weights"], want)
    assert json.loads((tmp_path / "runs" / "scratch" / "env.json").read_text())["start_weights"] is None

    proc = run_cli("train", specs[0], "--resume", "auto", "--set", "run.epochs=2", env=offline(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "start weights:" not in proc.stdout
    env = json.loads((tmp_path / "runs" / "run0" / "env.json").read_text())
    fits(env["start_weights"], cases[f"hf-hub:{FINETUNED}"][0])
    assert len(env["resumes"]) == 1 and "start_weights" not in env["resumes"][0]


def test_list_backbones_pretrained_lists_only_models_with_tags(cli_run):
    proc = cli_run("list", "backbones", "test_*", "--pretrained", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {c["name"]: c for c in json.loads(proc.stdout)}
    assert listed["test_efficientnet"]["pretrained_tags"][0] == "r160_in1k"  # the default first
    assert listed["test_efficientnet"]["pretrained_weights"]["r160_in1k"] == f"hf-hub:{DEFAULT_ID}"
    assert "test_vit4" not in listed and "test_mambaout" not in listed  # timm models without pretrained weights
    proc = cli_run("list", "backbones", "resnet18", "--pretrained")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["resnet18"]
    assert rows[0][-1].split(", ")[0] == "a1_in1k" and "tv_in1k" in rows[0][-1].split(", ")
    proc = cli_run("list", "losses", "--pretrained")
    assert proc.returncode == 2 and "--pretrained lists backbones only" in proc.stderr
    proc = cli_run("list", "backbones", "test_vit4", "--pretrained")
    assert proc.returncode == 2 and "no backbones with pretrained weights match 'test_vit4'" in proc.stderr
