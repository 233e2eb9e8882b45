"""``[backbone] pretrained`` from the Hugging Face Hub, through huggingface_hub's real cache code, never the network.

A hub cache is built on disk from locally saved timm models (``helpers_hub.hub_cache``: timm's ``save_for_hf`` files
in huggingface_hub's ``models--ORG--NAME/{blobs,snapshots,refs}`` layout) under a temporary ``HF_HOME``; every child
process runs with ``HF_HUB_OFFLINE=1`` (except the one ``check`` that shows the warning, which never downloads), so
that the weights come from the cache through ``hf_hub_download`` / ``try_to_load_from_cache``, exactly as on a
compute node without network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, subprocess_env, tiny_spec
from helpers_hub import hub_cache, perturbed_model

REPO_ID = "plugtrain-test/tinynet"  # a fine-tuned 10-class, 1-channel test_efficientnet (the digits' shape)
DEFAULT_ID = "timm/test_efficientnet.r160_in1k"  # what `pretrained = true` means for test_efficientnet
FROZEN = ["conv_stem", "bn1", "blocks"]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    hub_cache(home, REPO_ID, perturbed_model("test_efficientnet", seed=3, num_classes=10, in_chans=1))
    hub_cache(home, DEFAULT_ID, perturbed_model("test_efficientnet", seed=4))  # RGB, 1000 classes
    return home


def env(hf_home: Path, offline: bool = True) -> dict[str, str]:
    """A child's environment: this HF_HOME (no other cache variable), offline unless asked otherwise."""
    out = subprocess_env(HF_HOME=str(hf_home), PLUGTRAIN_PLAIN="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE"):
        out.pop(key, None)
    if offline:
        out["HF_HUB_OFFLINE"] = "1"
    return out


def saved(hf_home: Path, repo: str) -> dict:
    from safetensors.torch import load_file

    snapshots = hf_home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots"
    (snapshot,) = snapshots.iterdir()
    return load_file(str(snapshot / "model.safetensors"))


BUILD = """
import json, sys, torch
from safetensors.torch import load_file
from plugtrain.core.registry import get_registry
params = json.loads(sys.argv[1])
model = get_registry().get("backbones", "test_efficientnet").build(params, num_classes=10)
torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
print(json.dumps(model.plugtrain_pretrained_report))
"""


def build(hf_home: Path, tmp_path: Path, **params) -> tuple[dict, dict]:
    """The backbone built in an offline child process, as a run builds it: ``(state dict, pretrained report)``."""
    import torch

    out = tmp_path / "state.pt"
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(params), str(out)], capture_output=True,
                          text=True, timeout=300, env=env(hf_home))
    assert proc.returncode == 0, proc.stderr
    return torch.load(out, weights_only=True), json.loads(proc.stdout.strip().splitlines()[-1])


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- loading ----------------------------------------------------------------------------------------------------------


def test_a_hub_reference_loads_exactly_the_cached_weights(hf_home, tmp_path):
    state, report = build(hf_home, tmp_path, in_chans=1, pretrained=f"hf-hub:{REPO_ID}")
    weights = saved(hf_home, REPO_ID)
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert value.equal(state[key]), key
    assert report["source"] == f"hf-hub:{REPO_ID}" and report["loaded"] == len(weights)
    assert report["path"].startswith(str(hf_home / "hub" / "models--plugtrain-test--tinynet" / "snapshots"))


@pytest.mark.parametrize("pretrained", [True, DEFAULT_ID, f"hf-hub:{DEFAULT_ID}"])
def test_true_is_the_models_default_weights_and_timm_tags_name_them(hf_home, tmp_path, pretrained):
    """``true`` is timm's default tag of the model (``timm/test_efficientnet.r160_in1k``); a 1000-class RGB checkpoint
    starts a 10-class grey model: the classifier keeps its fresh init, the stem is adapted, the rest is loaded."""
    state, report = build(hf_home, tmp_path, in_chans=1, pretrained=pretrained)
    weights = saved(hf_home, DEFAULT_ID)
    assert report["source"] == f"hf-hub:{DEFAULT_ID}"
    assert sorted(report["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert report["adapted"] == ["conv_stem.weight"]
    assert state["conv_stem.weight"].allclose(weights["conv_stem.weight"].sum(dim=1, keepdim=True))
    for key, value in weights.items():
        if not key.startswith(("classifier.", "conv_stem.")):
            assert value.equal(state[key]), key
    assert state["classifier.weight"].shape == (10, weights["classifier.weight"].shape[1])


@pytest.mark.slow
def test_a_finetune_run_starts_offline_from_the_hub_cache(hf_home, tmp_path):
    """A real run from hub weights with HF_HUB_OFFLINE=1: the frozen layers end exactly as the cached weights (so
    they started there), the trained head moved."""
    import torch

    spec = tiny_spec(tmp_path, "hub-finetune", tmp_path / "runs", epochs=1, steps=2,
                     backbone_params=f'pretrained = "hf-hub:{REPO_ID}"\nfreeze = {json.dumps(FROZEN)}')
    before = files(hf_home)
    proc = run_cli("check", spec, env=env(hf_home))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # cached: no warning
    proc = run_cli("train", spec, env=env(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(hf_home) == before  # the cache was only read
    model = torch.load(tmp_path / "runs" / "hub-finetune" / "checkpoints" / "last.pt", map_location="cpu",
                       weights_only=True)["model"]
    weights = saved(hf_home, REPO_ID)
    frozen = [k for k in weights if k.startswith(tuple(f"{p}." for p in FROZEN)) and "running_" not in k
              and "num_batches" not in k]
    assert len(frozen) > 20
    for key in frozen:
        assert model[key].equal(weights[key]), key
    assert not model["classifier.weight"].equal(weights["classifier.weight"])  # the head trained


# -- missing weights, offline ---------------------------------------------------------------------------------------


def test_offline_and_not_cached_is_one_message_and_nothing_is_written(hf_home, tmp_path):
    spec = tiny_spec(tmp_path, "hub-miss", tmp_path / "runs", backbone_params='pretrained = "hf-hub:nobody/absent"')
    before = files(hf_home)
    for command in ("check", "train"):
        proc = run_cli(command, spec, env=env(hf_home))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        problems = [line for line in proc.stderr.splitlines() if line.startswith(str(spec))]
        assert len(problems) == 1, proc.stderr
        assert problems[0].startswith(f"{spec}:16:14: backbone.pretrained: hf-hub:nobody/absent is not in the "
                                      f"Hugging Face cache ({hf_home / 'hub'}) and HF_HUB_OFFLINE is set")
        assert "`plugtrain weights fetch SPEC`" in problems[0]
    assert not (tmp_path / "runs").exists()
    assert files(hf_home) == before


def test_weights_of_another_architecture_are_refused_before_anything_is_written(hf_home, tmp_path):
    spec = tiny_spec(tmp_path, "hub-arch", tmp_path / "runs", backbone="resnet18",
                     backbone_params=f'pretrained = "hf-hub:{REPO_ID}"')
    proc = run_cli("train", spec, env=env(hf_home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"hf-hub:{REPO_ID} holds weights of a timm 'test_efficientnet' (its config.json), not of the backbone "
            "'resnet18': set backbone.name = 'test_efficientnet'") in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_check_with_network_allowed_only_warns_and_never_downloads(hf_home, tmp_path):
    """Without HF_HUB_OFFLINE a missing file is a warning (training would download it); check itself only looks at
    the cache, so this runs without network too."""
    spec = tiny_spec(tmp_path, "hub-online", tmp_path / "runs", backbone_params='pretrained = "hf-hub:nobody/absent"')
    before = files(hf_home)
    proc = run_cli("check", spec, env=env(hf_home, offline=False))
    assert proc.returncode == 0, proc.stderr
    assert f"{spec}: OK" in proc.stdout
    assert (f"{spec}:16:14: warning: backbone.pretrained: hf-hub:nobody/absent is not in the Hugging Face cache yet"
            in proc.stderr) and "training will download it" in proc.stderr
    assert files(hf_home) == before


# -- plugtrain weights fetch ----------------------------------------------------------------------------------------


def test_weights_fetch_offline_reports_the_cache_and_refuses_what_it_cannot_fetch(hf_home, tmp_path):
    cached = tiny_spec(tmp_path, "cached", tmp_path / "runs", backbone_params=f'pretrained = "hf-hub:{REPO_ID}"')
    default = tiny_spec(tmp_path, "default", tmp_path / "runs", backbone_params="pretrained = true")
    local = tiny_spec(tmp_path, "local", tmp_path / "runs", backbone_params='pretrained = "weights/w.safetensors"')
    scratch = tiny_spec(tmp_path, "scratch", tmp_path / "runs")
    missing = tiny_spec(tmp_path, "missing", tmp_path / "runs", backbone_params='pretrained = "timm/nothing.here"')
    before = files(hf_home)

    proc = run_cli("weights", "fetch", cached, default, local, scratch, env=env(hf_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    snapshot = hf_home / "hub" / "models--plugtrain-test--tinynet" / "snapshots"
    assert lines[0] == f"{scratch}: no pretrained weights (backbone 'test_efficientnet' starts from scratch)"
    assert lines[1].startswith(f"{cached}: backbone 'test_efficientnet' pretrained = hf-hub:{REPO_ID}: cached "
                               f"({snapshot}")
    assert lines[2].startswith(f"{default}: backbone 'test_efficientnet' pretrained = hf-hub:{DEFAULT_ID}: cached")
    assert lines[3] == (f"{local}: backbone 'test_efficientnet' pretrained = weights/w.safetensors: a local file that "
                        "does not exist (relative to the working directory), nothing to fetch")
    assert lines[4] == f"cache: {hf_home / 'hub'} (training with HF_HUB_OFFLINE=1 reads the weights from here)"

    proc = run_cli("weights", "fetch", cached, missing, env=env(hf_home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{missing}: backbone 'test_efficientnet' pretrained = hf-hub:timm/nothing.here: NOT cached, and " \
           "HF_HUB_OFFLINE is set: nothing can be fetched here" in proc.stdout
    assert proc.stderr.strip() == (f"plugtrain: error: 1 weight not in the Hugging Face cache ({hf_home / 'hub'}): "
                                   "hf-hub:timm/nothing.here; run `plugtrain weights fetch` without HF_HUB_OFFLINE "
                                   "where there is network, with the same HF_HOME")
    assert files(hf_home) == before


def test_weights_fetch_checks_the_specs_first(hf_home, tmp_path):
    bad = tiny_spec(tmp_path, "bad", tmp_path / "runs", backbone_params='pretrained = "hf-hub:no-slash"')
    proc = run_cli("weights", "fetch", bad, env=env(hf_home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{bad}:16:14: backbone.pretrained: 'hf-hub:no-slash' is not a hub reference: a hub reference is "
            '"hf-hub:ORG/NAME"') in proc.stderr
    assert proc.stdout == ""


def test_the_cache_helper_is_what_huggingface_hub_reads(hf_home):
    """The on-disk layout is huggingface_hub's own: its scanner sees the repositories, revisions and files."""
    code = ("import json; from huggingface_hub import scan_cache_dir; info = scan_cache_dir(); "
            "print(json.dumps(sorted((r.repo_id, sorted(f.file_name for rev in r.revisions for f in rev.files)) "
            "for r in info.repos)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env(hf_home))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[REPO_ID, ["config.json", "model.safetensors"]],
                                       [DEFAULT_ID, ["config.json", "model.safetensors"]]]
    assert os.path.islink(next((hf_home / "hub" / "models--plugtrain-test--tinynet" / "snapshots").iterdir())
                          / "model.safetensors")


def test_weights_note_says_whether_hub_weights_are_cached(hf_home):
    """The line ``plugtrain check`` can print per spec (no network): cached, not cached, or nothing to say."""
    code = ("from plugtrain.plugins.backbones import weights_note as n; "
            f"print(n('test_efficientnet', 'hf-hub:{REPO_ID}')); print(n('test_efficientnet', True)); "
            "print(n('resnet18', True)); print(n('resnet18', 'w.pt')); print(n('resnet18', False))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env(hf_home))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"weights hf-hub:{REPO_ID}: cached", f"weights hf-hub:{DEFAULT_ID}: cached",
                                        "weights hf-hub:timm/resnet18.a1_in1k: not cached", "None", "None"]


def test_weights_fetch_leaves_a_plugins_backbone_alone(hf_home, tmp_path):
    """A backbone whose plugin declares nothing to fetch (no ``PLUGTRAIN_FETCH``) is reported, not guessed at."""
    from helpers_plugins import EXAMPLE_PLUGIN_SRC, make_example_dist

    spec = tiny_spec(tmp_path, "plugin-backbone", tmp_path / "runs", backbone="example-tinycnn")
    e = env(hf_home)
    e["PYTHONPATH"] = os.pathsep.join([str(make_example_dist(tmp_path / "example")), str(EXAMPLE_PLUGIN_SRC)])
    proc = run_cli("weights", "fetch", spec, env=e)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{spec}: backbone 'example-tinycnn' comes from plugin 'example', which declares "
                                   "nothing to fetch (PLUGTRAIN_FETCH)")
