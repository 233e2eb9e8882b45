"""``plugtrain weights fetch`` fetches what a plugin declares (``PLUGTRAIN_FETCH``, :mod:`plugtrain.hub`): a
third-party backbone gets the same command as timm's, and the command names no plugin (issue 22).

The plugin is a real distribution on a temporary path; the hub is a real huggingface_hub cache on disk
(``helpers_hub.hub_cache``) read with ``HF_HUB_OFFLINE=1``: never the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli, subprocess_env, tiny_spec
from helpers_hub import hub_cache, perturbed_model
from helpers_plugins import make_dist

REPO_ID = "third-party/tiny"

PLUGIN = '''
from plugtrain import Component, hookimpl
from plugtrain.hub import HubFiles, LocalFile


def tiny(num_classes: int = 10, in_chans: int = 3, weights: str = "", strict: bool = False):
    """A tiny third-party backbone whose ``weights`` name a hub repository."""
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))


def needs(factory, params):
    weights = params.get("weights", "")
    if not weights:
        return []
    if weights.endswith(".pt"):
        return [LocalFile(weights, param="weights")]
    refuse = params.get("strict", False)
    return [HubFiles(weights, ("weights.bin", "model.safetensors"), param="weights", key="backbone.weights",
                     check=(lambda: "these weights are refused by the plugin's own check") if refuse else None)]


PLUGTRAIN_FETCH = needs


@hookimpl
def plugtrain_backbones():
    return [Component("fetchy", tiny, summary="a backbone that declares what it needs fetched")]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fetch-plugin")
    hub_cache(root / "hf", REPO_ID, perturbed_model("test_efficientnet", seed=5))
    make_dist(root / "dist", "fetchy-dist", {"fetchy": "fetchy_plugin"}, {"fetchy_plugin": PLUGIN})
    env = subprocess_env(HF_HOME=str(root / "hf"), PLUGTRAIN_PLAIN="1", HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "dist"), env.get("PYTHONPATH", "")])
    return root, env


def test_a_plugins_declared_hub_files_are_looked_up_and_reported(setup, tmp_path):
    root, env = setup
    cached = tiny_spec(tmp_path, "cached", backbone="fetchy", backbone_params=f'weights = "{REPO_ID}"')
    local = tiny_spec(tmp_path, "local", backbone="fetchy", backbone_params='weights = "w.pt"')
    none = tiny_spec(tmp_path, "none", backbone="fetchy")
    proc = run_cli("weights", "fetch", cached, local, none, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    snapshot = root / "hf" / "hub" / "models--third-party--tiny" / "snapshots"
    assert lines[0] == f"{none}: no pretrained weights (backbone 'fetchy' starts from scratch)"  # said while reading
    assert lines[1].startswith(f"{cached}: backbone 'fetchy' weights = hf-hub:{REPO_ID}: cached ({snapshot}")
    assert lines[1].endswith("model.safetensors)")  # the first of the declared files the repository has
    assert lines[2] == (f"{local}: backbone 'fetchy' weights = w.pt: a local file that does not exist (relative "
                        "to the working directory), nothing to fetch")
    assert lines[3].startswith("cache: ")


def test_a_plugins_missing_or_refused_files_fail_with_one_message(setup, tmp_path):
    _, env = setup
    missing = tiny_spec(tmp_path, "missing", backbone="fetchy", backbone_params='weights = "third-party/absent"')
    proc = run_cli("weights", "fetch", missing, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{missing}: backbone 'fetchy' weights = hf-hub:third-party/absent: NOT cached, and HF_HUB_OFFLINE is "
            "set") in proc.stdout
    assert "1 weight not in the Hugging Face cache" in proc.stderr and "hf-hub:third-party/absent" in proc.stderr

    refused = tiny_spec(tmp_path, "refused", backbone="fetchy",
                        backbone_params=f'weights = "{REPO_ID}"\nstrict = true')
    proc = run_cli("weights", "fetch", refused, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cached (" in proc.stdout and ", but these weights are refused by the plugin's own check" in proc.stdout
