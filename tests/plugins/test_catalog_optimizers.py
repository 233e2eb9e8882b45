"""The optimizer catalog: every built-in optimizer trains a small fixed problem; SAM and the wrappers round-trip."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry, reset_registry
from plugtrain.plugins.optimizers import UNSUPPORTED, _build

#: Parameters that make each optimizer converge visibly in a few dozen full-batch steps (default: lr=0.01).
PARAMS: dict[str, dict] = {
    "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "ASGD": {"lr": 0.1},
    "Adadelta": {"lr": 1.0},
    "Adagrad": {"lr": 0.1},
    "Adafactor": {"lr": 0.05},
    "Rprop": {"lr": 0.01},
    "RAdam": {"lr": 0.03},
    "Ranger": {"lr": 0.03},
    "Madgrad": {"lr": 0.01},
    "LookAhead": {"base": "AdamW", "lr": 0.02, "k": 5, "alpha": 0.5},
    "SAM": {"base": "SGD", "lr": 0.1, "rho": 0.05, "base_params": {"momentum": 0.9}},
}

REQUIRED = {"SGD", "Adam", "AdamW", "RAdam", "RMSprop", "Madgrad", "LookAhead", "Ranger", "SAM"}


def builtin_names() -> list[str]:
    reset_registry()
    return sorted(c.name for c in get_registry().components("optimizers") if c.plugin == "optimizers")


def make_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return x, y


def make_model(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def build(name: str, params: dict, model: torch.nn.Module, groups=None):
    comp = get_registry().get("optimizers", name)
    return _build(comp, params, params=groups if groups is not None else model.parameters(), model=model)


def train_step(model, opt, x, y, loss_fn=torch.nn.functional.cross_entropy) -> float:
    """One optimizer step the way the runtime takes it: two passes for a two-step optimizer (SAM)."""
    loss = loss_fn(model(x), y)
    loss.backward()
    if hasattr(opt, "first_step") and hasattr(opt, "second_step"):
        opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad()
    return float(loss.detach())


def test_catalog_has_the_required_optimizers_and_not_the_unusable_ones():
    names = set(builtin_names())
    assert REQUIRED <= names
    assert not names & set(UNSUPPORTED)
    comps = {c.name: c for c in get_registry().components("optimizers")}
    for name in REQUIRED:
        assert comps[name].one_line, name
        assert "params" not in [p.name for p in comps[name].params]
        assert "model" not in [p.name for p in comps[name].params]


@pytest.mark.parametrize("name", builtin_names())
def test_optimizer_trains_a_small_fixed_problem(name):
    x, y = make_problem()
    model = make_model()
    opt = build(name, PARAMS.get(name, {"lr": 0.01}), model)
    assert isinstance(opt, torch.optim.Optimizer)
    with torch.no_grad():
        start = float(torch.nn.functional.cross_entropy(model(x), y))
    for _ in range(40):
        train_step(model, opt, x, y)
    with torch.no_grad():
        end = float(torch.nn.functional.cross_entropy(model(x), y))
    assert end < 0.8 * start, f"{name}: loss {start:.4f} -> {end:.4f}"


def test_sam_first_step_climbs_by_rho_and_second_step_restores_before_stepping():
    x, y = make_problem()
    model = make_model()
    opt = build("SAM", {"base": "SGD", "lr": 0.1, "rho": 0.05}, model)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    opt.first_step(zero_grad=True)
    moved = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    # the climb is rho along the normalised gradient
    assert torch.isclose(torch.sqrt(sum((m**2).sum() for m in moved)), torch.tensor(0.05), atol=1e-5)
    for m, g in zip(moved, grads, strict=True):
        assert torch.allclose(m, 0.05 * g / gnorm, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sharp = [p.grad.detach().clone() for p in model.parameters()]
    opt.second_step(zero_grad=True)
    # plain SGD from the original weights with the gradient taken at the perturbed point
    for p, b, g in zip(model.parameters(), before, sharp, strict=True):
        assert torch.allclose(p.detach(), b - 0.1 * g, atol=1e-6)


def test_sam_step_with_closure_equals_first_and_second_step():
    x, y = make_problem()
    results = []
    for use_closure in (False, True):
        model = make_model()
        opt = build("SAM", {"base": "AdamW", "lr": 0.01}, model)
        for _ in range(3):
            if use_closure:
                def closure(opt=opt, model=model):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    return loss

                closure()
                opt.step(closure)
                opt.zero_grad()
            else:
                train_step(model, opt, x, y)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_sam_with_a_scheduler_warns_nothing_and_schedules_the_base():
    x, y = make_problem()
    model = make_model()
    opt = build("SAM", {"base": "SGD", "lr": 0.1}, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            train_step(model, opt, x, y)
            sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


ROUND_TRIP = [
    ("SAM", {"base": "SGD", "lr": 0.1, "base_params": {"momentum": 0.9}}),
    ("SAM", {"base": "AdamW", "lr": 0.01, "adaptive": True}),
    ("SAM", {"base": "LookAhead", "base_params": {"base": "Adam", "lr": 0.01, "k": 2}}),
    ("LookAhead", {"base": "AdamW", "lr": 0.01, "k": 3}),
    ("Ranger", {"lr": 0.01}),
    ("Madgrad", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01}),
]


@pytest.mark.parametrize(("name", "params"), ROUND_TRIP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ROUND_TRIP)])
def test_state_dict_round_trip_gives_an_exact_resume(name, params):
    """Train 5 steps, save (weights-only torch file), train 4 more; a fresh copy resumed from the file matches."""
    x, y = make_problem()
    model = make_model()
    opt = build(name, params, model)
    for _ in range(5):
        train_step(model, opt, x, y)
    from plugtrain.core.runtime.checkpoint import check_plain

    check_plain({"optimizer": opt.state_dict()})  # what the trainer demands of a checkpoint: plain keys and values
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    for _ in range(4):
        train_step(model, opt, x, y)
    expected = torch.cat([p.detach().flatten() for p in model.parameters()])

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = make_model(seed=99)
    model2.load_state_dict(ckpt["model"])
    opt2 = build(name, params, model2)
    opt2.load_state_dict(ckpt["optimizer"])
    for _ in range(4):
        train_step(model2, opt2, x, y)
    got = torch.cat([p.detach().flatten() for p in model2.parameters()])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["SAM", "LookAhead", "AdamW", "Ranger"])
def test_frozen_parameters_stay_in_the_optimizer_and_do_not_move(name):
    x, y = make_problem()
    model = make_model()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    opt = build(name, PARAMS.get(name, {"lr": 0.01}), model)
    assert any(frozen is p for g in opt.param_groups for p in g["params"])
    before = frozen.detach().clone()
    for _ in range(6):
        train_step(model, opt, x, y)
    assert torch.equal(frozen.detach(), before)
    frozen.requires_grad_(True)  # unfreezing needs no optimizer change
    for _ in range(2):
        train_step(model, opt, x, y)
    assert not torch.equal(frozen.detach(), before)


def test_wrappers_keep_parameter_groups():
    model = make_model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    for name, params in [("SAM", {"base": "AdamW", "lr": 0.01}), ("LookAhead", {"base": "AdamW", "lr": 0.01})]:
        opt = build(name, params, model, groups=[dict(g) for g in groups])
        assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
        assert all(g["lr"] == 0.01 for g in opt.param_groups)


def test_wrapper_base_errors_are_readable():
    model = make_model()
    with pytest.raises(PlugtrainError, match=r"SGD has no parameter 'lrr'\. Did you mean 'lr'\?"):
        build("SAM", {"base_params": {"lrr": 0.1}}, model)
    with pytest.raises(PlugtrainError, match=r"unknown optimizer 'AdamX'.*Did you mean"):
        build("LookAhead", {"base": "AdamX"}, model)
    with pytest.raises(PlugtrainError, match="SAM cannot wrap SAM"):
        build("SAM", {"base": "SAM"}, model)
    with pytest.raises(PlugtrainError, match="LookAhead cannot wrap the two-step optimizer SAM"):
        build("LookAhead", {"base": "SAM"}, model)
