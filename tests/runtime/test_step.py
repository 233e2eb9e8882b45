"""The training step itself, built directly (no CLI, no data set): accumulation, clipping, warmup, SAM, placeholders.

Each test builds a :class:`TrainStep` around a tiny torch model with the real optimizers and scaler it runs with.
"""

from __future__ import annotations

import pytest
import torch

from plugtrain.core.runtime.step import ModelInput, Network, TrainStep, Warmup


def _model(bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Flatten(), torch.nn.Linear(12, 8)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(8))
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, placeholder=None, **options) -> TrainStep:
    net = Network(model, torch.nn.CrossEntropyLoss())
    return TrainStep(net, [optimizer], scaler=torch.amp.GradScaler("cpu", enabled=False), precision="fp32",
                     device=torch.device("cpu"), model_input=ModelInput(None, None, torch.device("cpu")),
                     warmup=options.pop("warmup", Warmup(0, 1.0)), placeholder=placeholder, **options)


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 2, 2), generator=g, dtype=torch.uint8), torch.randint(0, 3, (n,), generator=g)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_two_accumulated_micro_batches_equal_one_doubled_batch():
    a, b = _model(), _model()
    step_a = _step(a, torch.optim.SGD(a.parameters(), lr=0.1))
    step_b = _step(b, torch.optim.SGD(b.parameters(), lr=0.1))
    (x1, y1), (x2, y2) = _batch(4, 1), _batch(4, 2)
    losses = step_a.step([(x1, y1, False), (x2, y2, False)], 0)
    step_b.step([(torch.cat([x1, x2]), torch.cat([y1, y2]), False)], 0)
    assert [n for _, n in losses] == [4, 4]
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in a.parameters())  # zeroed after the step


def test_clipping_bounds_the_gradient_norm():
    model = _model()
    before = _params(model)
    step = _step(model, torch.optim.SGD(model.parameters(), lr=1.0), clip_grad_norm=0.05)
    x, y = _batch(8, 3)
    step.step([(x * 0 + 255, y, False)], 0)  # large inputs, large gradients
    delta = torch.cat([(p.detach() - q).reshape(-1) for p, q in zip(model.parameters(), before, strict=True)])
    assert 0.049 < float(delta.norm()) <= 0.05 + 1e-6  # SGD with lr 1 moves by exactly the clipped gradient


@pytest.mark.parametrize("k", [0, 1, 3, 4, 6])
def test_warmup_scales_the_lr_of_step_k_and_restores_it(k):
    warmup = Warmup(4, 0.1)
    expected = 0.1 + 0.9 * k / 4 if k < 4 else 1.0
    assert warmup.factor(k) == pytest.approx(expected)
    model, ref = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5 * expected)
    x, y = _batch(6, 4)
    _step(model, opt, warmup=warmup).step([(x, y, False)], k)
    _step(ref, ref_opt).step([(x, y, False)], 0)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert opt.param_groups[0]["lr"] == 0.5  # schedulers never see the warmup scale


def test_sam_runs_two_forward_backward_passes_per_step():
    from plugtrain.core.registry import get_registry

    model = _model()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    opt = get_registry().get("optimizers", "SAM").build({"base": "SGD", "lr": 0.1, "rho": 0.05},
                                                          params=model.parameters(), model=model)
    before = _params(model)
    x, y = _batch(6, 5)
    losses = _step(model, opt, sam=True).step([(x, y, False)], 0)
    assert len(forwards) == 2 and len(losses) == 1  # the second pass's loss is not recorded
    # The update is SGD's at the perturbed point: not the plain SGD step of the first gradient.
    plain = _model()
    _step(plain, torch.optim.SGD(plain.parameters(), lr=0.1)).step([(x, y, False)], 0)
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True)]
    assert all(moved)
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), plain.parameters(), strict=True))


def test_a_placeholder_micro_batch_adds_no_gradient_and_leaves_batch_norm_alone():
    model = _model(bn=True)
    step = _step(model, torch.optim.SGD(model.parameters(), lr=0.5), placeholder=(*_batch(2, 0), True))
    x, y = _batch(4, 6)
    real = step.micro_batch(x, y, skipped=False)
    assert real[2] is False
    fake = step.micro_batch(None, y[:0], skipped=True)  # every sample skipped: the last readable batch, flagged
    assert fake[2] is True and torch.equal(fake[0], x)
    bn = model[2]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    before = _params(model)
    losses = step.step([fake], 0)
    assert losses == []
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)  # loss weighted 0: a zero gradient
    assert bn.momentum == 0.1  # restored


def test_without_placeholder_an_empty_micro_batch_is_skipped_and_a_single_sample_doubled():
    model = _model(bn=True)
    step = _step(model, torch.optim.SGD(model.parameters(), lr=0.5))
    images, targets, fake = step.micro_batch(None, torch.zeros(0, dtype=torch.long), skipped=True)
    assert images is None and not fake
    before = _params(model)
    assert step.step([(images, targets, fake)], 0) == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    x, y = _batch(1, 7)
    images, targets, _ = step.micro_batch(x, y, skipped=True)
    assert images.shape[0] == 2 and torch.equal(images[0], images[1])


def test_ema_follows_each_step():
    from plugtrain.core.runtime.build import build_ema

    model = _model()
    ema = build_ema(model, 0.5)
    step = _step(model, torch.optim.SGD(model.parameters(), lr=0.1), ema=ema, ema_model=model)
    snapshots = [_params(model)]
    for k in range(4):
        step.step([(*_batch(4, k), False)], k)
        snapshots.append(_params(model))
    # timm's ModelEmaV3 copies the model at steps 0 and 1, then averages with the decay (0.5) at steps 2 and 3.
    for e, w1, w2, w3 in zip(ema.module.parameters(), *snapshots[2:], strict=True):
        torch.testing.assert_close(e, 0.25 * w1 + 0.25 * w2 + 0.5 * w3)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_freeze_bn_keeps_the_statistics_of_frozen_batch_norm_layers(freeze_bn):
    from plugtrain.core.runtime.step import train_mode

    model = _model(bn=True)
    for p in model[2].parameters():
        p.requires_grad_(False)
    model.plugtrain_freeze_bn = freeze_bn
    step = _step(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    train_mode(step.net, model)
    before = model[2].running_mean.clone()
    step.step([(*_batch(8, 9), False)], 0)
    assert torch.equal(model[2].running_mean, before) == freeze_bn
    assert model[1].training  # the other layers train
