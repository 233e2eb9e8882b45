"""The optimisation direction of the primary metric when the spec does not say (``run.mode`` unset)."""

from pathlib import Path

import pytest

from plugtrain.core.spec import load_spec

QUICKSTART = Path(__file__).resolve().parents[2] / "specs" / "quickstart.toml"


@pytest.mark.parametrize(
    ("metric", "mode"),
    [("val/loss", "min"), ("val/mae", "min"), ("val/rmse", "min"), ("val_ema/loss", "min"),
     ("val/accuracy", "max"), ("val/f1_macro", "max"), ("val/r2", "max")],
)
def test_mode_follows_the_primary_metric(metric: str, mode: str) -> None:
    spec = load_spec(QUICKSTART)  # a loaded spec, its primary metric set afterwards (check refuses metrics the
    spec.run.primary_metric = metric  # quickstart's classification run does not have: val/mae, val/r2, ...)
    spec.run.mode = None  # the quickstart says mode = "max"; here the spec leaves it out
    assert spec.mode == mode


def test_an_explicit_mode_wins() -> None:
    spec = load_spec(QUICKSTART, ['run.primary_metric="val/loss"', 'run.mode="max"'])
    assert spec.mode == "max"
