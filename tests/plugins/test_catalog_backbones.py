"""Backbones: GeM pooling, the L2 embedding head, local pretrained weights, freeze and unfreeze."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry

X1 = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
X3 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def backbone(name: str = "resnet18", num_classes: int = 0, **params):
    return get_registry().get("backbones", name).build(params, num_classes=num_classes)


def test_backbone_parameters_are_shown():
    comp = get_registry().get("backbones", "resnet18")
    names = [p.name for p in comp.params]
    for expected in ("in_chans", "drop_rate", "drop_path_rate", "global_pool", "gem_p", "gem_eps", "embedding_dim",
                     "pretrained", "freeze", "unfreeze_after_epochs"):
        assert expected in names
    assert "num_classes" not in names and "model_name" not in names


def test_plain_backbone_is_the_timm_model_with_its_keys():
    model = backbone(num_classes=5, in_chans=1)
    assert type(model).__module__.startswith("timm")
    assert model(X1).shape == (2, 5) and model.plugtrain_out_features == 5
    assert "fc.weight" in model.state_dict()
    features = backbone(num_classes=0, in_chans=1)
    assert features(X1).shape == (2, 512) and features.plugtrain_out_features == 512


@pytest.mark.parametrize("p", [1.0, 3.0])
def test_gem_pooling_is_the_generalised_mean(p):
    torch.manual_seed(0)
    model = backbone(num_classes=0, in_chans=1, global_pool="gem", gem_p=p).eval()
    with torch.no_grad():
        fmap = model.body.forward_features(X1)
        got = model(X1)
    expected = fmap.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)
    assert got.shape == (2, 512)
    assert torch.allclose(got, expected, atol=1e-5)
    if p == 1.0:
        assert torch.allclose(got, fmap.clamp(min=1e-6).mean(dim=(2, 3)), atol=1e-5)  # avg pooling of ReLU maps
    assert "pool.p" not in dict(model.named_parameters()) and "pool.p" in dict(model.named_buffers())
    learnable = backbone(num_classes=3, in_chans=1, global_pool="gem", gem_learnable_p=True)
    assert "pool.p" in dict(learnable.named_parameters())
    assert learnable(X1).shape == (2, 3)


def test_gem_on_a_transformer_says_why_not():
    model = backbone("vit_tiny_patch16_224", num_classes=0, global_pool="gem")
    with pytest.raises(ValueError, match="needs \\(N, C, H, W\\) feature maps"):
        model(torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize("pool", ["avg", "gem"])
def test_embedding_head_outputs_l2_normalised_embeddings(pool):
    model = backbone(num_classes=0, in_chans=1, global_pool=pool, embedding_dim=24)
    out = model(X1)
    assert out.shape == (2, 24) and model.plugtrain_out_features == 24
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    classifier = backbone(num_classes=7, in_chans=1, global_pool=pool, embedding_dim=24)
    assert classifier(X1).shape == (2, 7) and classifier.plugtrain_out_features == 7
    emb = classifier.forward_embedding(X1)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(classifier(X1), classifier.head(emb), atol=1e-6)


def test_pretrained_references_and_bad_parameters_are_refused():
    from plugtrain.plugins.backbones import weights_ref

    # true is the model's default weights on the hub (loaded from a cache in tests/plugins/test_hub_weights.py)
    assert weights_ref("resnet18", True).label == "hf-hub:timm/resnet18.a1_in1k"
    with pytest.raises(PlugtrainError, match='a hub reference is "hf-hub:ORG/NAME"'):
        backbone(pretrained="hf-hub:no-slash")
    with pytest.raises(PlugtrainError, match="does not exist"):
        backbone(pretrained="no/such/weights.safetensors")
    with pytest.raises(PlugtrainError, match="embedding_dim must be a positive integer"):
        backbone(embedding_dim=0)
    with pytest.raises(PlugtrainError, match="freeze names no layers"):
        backbone(unfreeze_after_epochs=2)


def _perturbed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
            for k, v in model.state_dict().items()}


def test_pretrained_from_a_local_safetensors_file(tmp_path):
    source = backbone(num_classes=10)
    weights = _perturbed(source)
    path = tmp_path / "r18.safetensors"
    save_file(weights, str(path))

    same = backbone(num_classes=10, pretrained=str(path))
    for k, v in same.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert same.plugtrain_pretrained_report["loaded"] == len(weights)

    # another number of classes: the classifier keeps its fresh init, everything else loads
    other = backbone(num_classes=5, pretrained=str(path))
    assert sorted(other.plugtrain_pretrained_report["skipped"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(other.state_dict()["layer3.1.conv2.weight"], weights["layer3.1.conv2.weight"])
    assert other.state_dict()["fc.weight"].shape == (5, 512)

    # grey images from RGB weights: the first conv is adapted by summing the input channels
    grey = backbone(num_classes=10, in_chans=1, pretrained=str(path))
    assert grey.plugtrain_pretrained_report["adapted"] == ["conv1.weight"]
    assert torch.allclose(grey.state_dict()["conv1.weight"], weights["conv1.weight"].sum(dim=1, keepdim=True))


def test_pretrained_from_a_weights_only_torch_file_and_a_checkpoint(tmp_path):
    weights = _perturbed(backbone(num_classes=3))
    plain = tmp_path / "plain.pt"
    torch.save(weights, plain)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, ckpt)
    for path in (plain, ckpt):
        model = backbone(num_classes=3, pretrained=str(path))
        assert torch.equal(model.state_dict()["layer2.0.bn1.running_mean"], weights["layer2.0.bn1.running_mean"])
        assert torch.equal(model.state_dict()["fc.weight"], weights["fc.weight"])


def test_pretrained_between_timm_and_wrapper_layouts(tmp_path):
    """Stage 1 (SupCon: GeM + embedding) -> stage 2 (ArcFace, same head) -> a plain classifier finetune."""
    stage1 = backbone(num_classes=0, global_pool="gem", embedding_dim=16)
    weights = _perturbed(stage1)
    path = tmp_path / "stage1.pt"
    torch.save(weights, path)
    stage2 = backbone(num_classes=0, global_pool="gem", embedding_dim=16, pretrained=str(path))
    for k, v in stage2.state_dict().items():
        assert torch.equal(v, weights[k]), k
    bigger = backbone(num_classes=0, global_pool="gem", embedding_dim=32, pretrained=str(path))
    assert set(bigger.plugtrain_pretrained_report["skipped"]) == {"embedding.linear.weight", "embedding.linear.bias"}
    plain = backbone(num_classes=4, pretrained=str(path))
    assert torch.equal(plain.state_dict()["layer4.1.conv2.weight"], weights["body.layer4.1.conv2.weight"])
    assert "embedding.linear.weight" in plain.plugtrain_pretrained_report["skipped"]
    # and a timm-layout file into a wrapper loads into its body
    timm_path = tmp_path / "timm.safetensors"
    timm_weights = _perturbed(backbone(num_classes=1000))
    save_file(timm_weights, str(timm_path))
    wrapped = backbone(num_classes=0, embedding_dim=8, pretrained=str(timm_path))
    assert torch.equal(wrapped.body.state_dict()["conv1.weight"], timm_weights["conv1.weight"])


def test_mismatched_weights_give_a_clear_error(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(backbone(num_classes=10).state_dict(), str(path))
    with pytest.raises(PlugtrainError, match=r"does not fit backbone 'resnet34': missing keys: layer1\.2\."):
        backbone("resnet34", pretrained=str(path))
    bad = backbone(num_classes=10).state_dict()
    bad["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    bad["extra.weight"] = torch.zeros(1)
    bad_path = tmp_path / "bad.safetensors"
    save_file(bad, str(bad_path))
    with pytest.raises(PlugtrainError) as exc:
        backbone(num_classes=10, pretrained=str(bad_path))
    msg = str(exc.value)
    assert "unexpected keys: extra.weight" in msg
    assert "shape mismatch: layer1.0.conv1.weight (32, 64, 3, 3) vs model (64, 64, 3, 3)" in msg
    with pytest.raises(PlugtrainError, match="does not exist"):
        backbone(pretrained=str(tmp_path / "nope.pt"))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": types.SimpleNamespace(a=1)}, pickled)
    with pytest.raises(PlugtrainError, match="refused to load"):
        backbone(pretrained=str(pickled))


def test_freeze_by_prefix_and_training_leaves_frozen_layers_alone():
    model = backbone(num_classes=3, in_chans=1, freeze=["conv1", "layer1"], unfreeze_after_epochs=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1.", "layer1.")) for n in frozen)
    assert {n for n in dict(model.named_parameters()) if n.startswith(("conv1.", "layer1."))} == frozen
    assert model.plugtrain_frozen == ["conv1", "layer1"] and model.plugtrain_unfreeze_after == 1
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)  # frozen parameters stay in the optimizer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(X1), torch.tensor([0, 2])).backward()
    opt.step()
    after = dict(model.named_parameters())
    for n in frozen:
        assert torch.equal(after[n].detach(), before[n]), n
    for n in ("fc.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight"):
        assert not torch.equal(after[n].detach(), before[n]), n
    # in the wrapper, names match with and without the leading ``body.``
    wrapped = backbone(num_classes=0, embedding_dim=8, freeze=["layer4", "embedding"])
    off = {n for n, p in wrapped.named_parameters() if not p.requires_grad}
    assert off == {n for n in dict(wrapped.named_parameters()) if n.startswith(("body.layer4.", "embedding."))}


def test_freeze_prefix_must_name_a_module():
    with pytest.raises(PlugtrainError, match=r"no parameters under 'layr1'\. Did you mean 'layer1'"):
        backbone(freeze=["layr1"])
    with pytest.raises(PlugtrainError, match="no parameters under 'layer1.0.conv'"):
        backbone(freeze=["layer1.0.conv"])  # a prefix of names, not of strings: conv1 is not conv


def test_unfreeze_callback_turns_layers_back_on_after_n_epochs():
    model = backbone(num_classes=3, in_chans=1, freeze=["layer1"], unfreeze_after_epochs=2)
    changes = []
    trainer = types.SimpleNamespace(model=model, requires_grad_changed=lambda: changes.append(True))
    callback = get_registry().get("callbacks", "unfreeze").build({})
    for epoch in (1, 2):  # the runtime numbers epochs from 1: two epochs train with layer1 frozen
        callback.on_epoch_start(trainer, epoch)
        assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer1."))
    callback.on_epoch_start(trainer, 3)
    assert all(p.requires_grad for p in model.parameters())
    assert changes == [True]
    callback.on_epoch_start(trainer, 4)  # nothing left to unfreeze: no second notification
    assert changes == [True]
    # an explicit after_epochs overrides the backbone's
    model2 = backbone(num_classes=3, in_chans=1, freeze=["layer1"])
    early = get_registry().get("callbacks", "unfreeze").build({"after_epochs": 1})
    early.on_epoch_start(types.SimpleNamespace(model=model2), 2)
    assert all(p.requires_grad for p in model2.parameters())
