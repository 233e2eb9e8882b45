"""Hub references that training would refuse are refused by ``plugtrain check`` first (issue 21, item 5): an empty
revision after ``@`` (it used to be dropped: the default branch was used instead of the one meant), and weights
whose cached ``config.json`` names another architecture than the spec's backbone (found only by ``train`` before).

The hub cache is built on disk as ``helpers_hub.hub_cache`` does (timm's ``save_for_hf`` files in huggingface_hub's
layout) under a temporary ``HF_HOME``; the commands run as children with that ``HF_HOME``, so that huggingface_hub's
own cache API finds the files, offline, as on a compute node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, subprocess_env, tiny_spec
from helpers_hub import hub_cache

from plugtrain.core.errors import PlugtrainError
from plugtrain.plugins.backbones import weights_ref

REPO_ID = "plugtrain-test/effnet-cfg"  # test_efficientnet weights (and config.json), named by a spec with resnet18


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    import timm

    home = tmp_path_factory.mktemp("hf-home")
    hub_cache(home, REPO_ID, timm.create_model("test_efficientnet", pretrained=False, num_classes=10, in_chans=1))
    return home


def env(hf_home: Path, offline: bool = True) -> dict[str, str]:
    out = subprocess_env(HF_HOME=str(hf_home), PLUGTRAIN_PLAIN="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        out.pop(key, None)
    if offline:
        out["HF_HUB_OFFLINE"] = "1"
    return out


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("text", ["hf-hub:org/name@", "hf-hub:org/name@ ", "hf-hub:org/name@v1 x",
                                  "hf-hub:org/name@a@b"])
def test_a_revision_that_is_empty_or_no_revision_is_refused(text):
    with pytest.raises(PlugtrainError, match=r"names (an empty revision after '@'|the revision .*, which is not one)"):
        weights_ref("resnet18", text)


@pytest.mark.parametrize(("text", "revision"), [("hf-hub:org/name", None), ("hf-hub:org/name@main", "main"),
                                                ("hf-hub:org/name@refs/pr/1", "refs/pr/1"),
                                                ("hf-hub:org/name@0123456789abcdef", "0123456789abcdef")])
def test_a_revision_that_is_one_is_kept(text, revision):
    ref = weights_ref("resnet18", text)
    assert (ref.repo, ref.revision) == ("org/name", revision)


def test_check_and_train_refuse_an_empty_revision_where_the_spec_says_it(tmp_path, cli_run):
    spec = tiny_spec(tmp_path, "empty-rev", tmp_path / "runs", backbone_params='pretrained = "hf-hub:org/name@"')
    for command in ("check", "train"):
        proc = cli_run(command, spec)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert (f"{spec}:16:14: backbone.pretrained: 'hf-hub:org/name@' names an empty revision after '@': write "
                "\"hf-hub:org/name@REVISION\" (a branch, tag or commit) or \"hf-hub:org/name\" for the default "
                "branch") in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_check_finds_weights_of_another_architecture_in_the_hub_cache(hf_home, tmp_path, offline=True):
    spec = tiny_spec(tmp_path, "hub-arch", tmp_path / "runs", backbone="resnet18",
                     backbone_params=f'pretrained = "hf-hub:{REPO_ID}"')
    before = files(hf_home)
    proc = run_cli("check", spec, env=env(hf_home, offline=offline))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{spec}:16:14: backbone.pretrained: hf-hub:{REPO_ID} holds weights of a timm 'test_efficientnet' (its "
            "config.json), not of the backbone 'resnet18': set backbone.name = 'test_efficientnet'") in proc.stderr
    assert files(hf_home) == before and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_weights_fetch_reports_weights_of_another_architecture(hf_home, tmp_path):
    wrong = tiny_spec(tmp_path, "wrong", tmp_path / "runs", backbone="resnet18",
                      backbone_params=f'pretrained = "hf-hub:{REPO_ID}"')
    right = tiny_spec(tmp_path, "right", tmp_path / "runs", backbone_params=f'pretrained = "hf-hub:{REPO_ID}"')
    proc = run_cli("weights", "fetch", right, wrong, env=env(hf_home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{right}: backbone 'test_efficientnet' pretrained = hf-hub:{REPO_ID}: cached (")
    assert "but" not in lines[0]
    assert lines[1].startswith(f"{wrong}: backbone 'resnet18' pretrained = hf-hub:{REPO_ID}: cached (")
    assert lines[1].endswith(f", but hf-hub:{REPO_ID} holds weights of a timm 'test_efficientnet' (its config.json), "
                             "not of the backbone 'resnet18': set backbone.name = 'test_efficientnet'")
    assert f"1 spec names weights of another architecture than its backbone: {wrong}" in proc.stderr
