"""The scheduler catalog: each scheduler follows its documented learning-rate curve, with plugtrain's defaults."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from plugtrain.core.registry import get_registry, reset_registry
from plugtrain.plugins.optimizers import _build

EPOCHS, STEPS_PER_EPOCH = 10, 5
TOTAL = EPOCHS * STEPS_PER_EPOCH
LR = 0.1


def make_optimizer(kind: str = "SGD", momentum: float = 0.9) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.zeros(3))
    if kind == "SGD":
        return torch.optim.SGD([p], lr=LR, momentum=momentum)
    return torch.optim.AdamW([p], lr=LR)


def build(name: str, params: dict | None = None, optimizer=None):
    optimizer = optimizer or make_optimizer()
    comp = get_registry().get("schedulers", name)
    sched = _build(comp, params or {}, optimizer=optimizer, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                   total_steps=TOTAL)
    return optimizer, sched


def curve(name: str, params: dict | None = None, n: int = EPOCHS, optimizer=None) -> list[float]:
    """The learning rate before each of ``n`` optimizer + scheduler steps."""
    opt, sched = build(name, params, optimizer)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs


def cosine(t: float, period: float, top: float = LR, bottom: float = 0.0) -> float:
    return bottom + (top - bottom) * (1 + math.cos(math.pi * t / period)) / 2


def test_cosine_annealing_defaults_t_max_to_the_run():
    lrs = curve("CosineAnnealingLR", n=EPOCHS + 1)
    for e in (0, 3, 5, 9, 10):
        assert lrs[e] == pytest.approx(cosine(e, EPOCHS))
    assert lrs[EPOCHS] == pytest.approx(0.0, abs=1e-12)
    lrs = curve("CosineAnnealingLR", {"T_max": 4, "eta_min": 0.01}, n=5)
    assert lrs[2] == pytest.approx(cosine(2, 4, bottom=0.01))


def test_cosine_annealing_warm_restarts():
    lrs = curve("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2}, n=10)
    assert lrs[0] == pytest.approx(LR) and lrs[3] == pytest.approx(LR) and lrs[9] == pytest.approx(LR)
    assert lrs[1] == pytest.approx(cosine(1, 3))
    assert lrs[5] == pytest.approx(cosine(2, 6))


def test_cyclic_lr_defaults_and_interval():
    opt, sched = build("CyclicLR")
    assert sched.interval == "step"
    lrs = curve("CyclicLR", n=4 * 2 * STEPS_PER_EPOCH + 1)
    up = 2 * STEPS_PER_EPOCH  # default half cycle: two epochs of steps
    bottom = LR / 10
    assert lrs[0] == pytest.approx(bottom)
    assert lrs[up // 2] == pytest.approx(bottom + (LR - bottom) / 2)
    assert lrs[up] == pytest.approx(LR)
    assert lrs[2 * up] == pytest.approx(bottom)
    assert max(lrs) == pytest.approx(LR)
    explicit = curve("CyclicLR", {"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 4}, n=5)
    assert explicit[0] == pytest.approx(0.001) and explicit[4] == pytest.approx(0.01)


def test_cyclic_momentum_only_when_the_optimizer_has_it():
    opt, _ = build("CyclicLR", optimizer=make_optimizer("SGD", momentum=0.0))
    assert opt.param_groups[0]["momentum"] == 0.0  # not switched on behind the user's back
    opt, sched = build("CyclicLR", optimizer=make_optimizer("AdamW"))
    for _ in range(STEPS_PER_EPOCH):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.85)  # cycled from 0.9 down towards 0.8
    opt, _ = build("CyclicLR", optimizer=make_optimizer("SGD", momentum=0.9))
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)


def test_one_cycle_lr_over_the_run_steps():
    opt, sched = build("OneCycleLR")
    assert sched.interval == "step"
    lrs = curve("OneCycleLR", n=TOTAL + 5)
    peak = int(0.3 * TOTAL) - 1  # torch: the peak is at step pct_start * total_steps - 1
    assert lrs[0] == pytest.approx(LR / 25)
    assert lrs[peak] == pytest.approx(LR)
    assert max(lrs) == pytest.approx(LR)
    mid = (peak + TOTAL - 1) // 2
    assert lrs[mid] == pytest.approx(cosine(mid - peak, TOTAL - 1 - peak, top=LR, bottom=LR / 25 / 1e4))
    assert lrs[TOTAL - 1] == pytest.approx(LR / 25 / 1e4)
    assert lrs[TOTAL + 4] == pytest.approx(LR / 25 / 1e4)  # held, not an error, past total_steps


def test_exponential_step_and_multistep():
    assert curve("ExponentialLR", {"gamma": 0.5}, n=4) == pytest.approx([LR * 0.5**e for e in range(4)])
    assert curve("StepLR", {"step_size": 3, "gamma": 0.1}, n=7) == pytest.approx([LR * 0.1 ** (e // 3)
                                                                                   for e in range(7)])
    lrs = curve("MultiStepLR", {"milestones": [2, 5], "gamma": 0.5}, n=7)
    assert lrs == pytest.approx([LR, LR, LR / 2, LR / 2, LR / 2, LR / 4, LR / 4])


def test_constant_linear_and_polynomial():
    assert curve("ConstantLR", {"factor": 0.5, "total_iters": 2}, n=4) == pytest.approx([LR / 2, LR / 2, LR, LR])
    assert curve("LinearLR", {"start_factor": 0.25, "total_iters": 3}, n=5) == pytest.approx(
        [LR * 0.25, LR * 0.5, LR * 0.75, LR, LR])
    assert curve("PolynomialLR", {"total_iters": 4, "power": 2.0}, n=5) == pytest.approx(
        [LR * (1 - e / 4) ** 2 for e in range(5)])


@pytest.mark.parametrize(("mode", "values", "reduced_at"), [
    ("auto", [0.50, 0.60, 0.60, 0.60, 0.60], 3),  # follows the run's "max" metric: 0.60 stops improving
    ("min", [0.50, 0.40, 0.45, 0.45, 0.45], 3),
])
def test_reduce_lr_on_plateau(mode, values, reduced_at):
    opt, sched = build("ReduceLROnPlateau", {"mode": mode, "patience": 1, "factor": 0.5})
    sched.set_run_mode("max" if mode == "auto" else "min")
    lrs = []
    for v in values:
        opt.step()
        sched.step(v)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:reduced_at] == [LR] * reduced_at
    assert lrs[reduced_at] == pytest.approx(LR / 2)


def test_explicit_plateau_mode_is_not_overridden():
    _, sched = build("ReduceLROnPlateau", {"mode": "min"})
    sched.set_run_mode("max")
    assert sched.mode == "min"


def test_scheduler_state_round_trips():
    opt, sched = build("OneCycleLR")
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = build("OneCycleLR")
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_every_listed_scheduler_is_covered_here():
    reset_registry()
    listed = {c.name for c in get_registry().components("schedulers") if c.plugin == "schedulers"}
    covered = {"CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR", "ExponentialLR",
               "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "PolynomialLR", "ReduceLROnPlateau"}
    assert listed == covered
    params = {p.name for p in get_registry().get("schedulers", "OneCycleLR").params}
    assert "total_steps" not in params and "optimizer" not in params and "max_lr" in params
