"""``--weights model|ema|swa`` for ``evaluate`` and ``predict``: the EMA and SWA weights a run saved evaluate to the
figures the run reported for them (``val_ema/*``, ``val_swa/*`` in metrics.csv; the SWA batch-norm statistics
recomputed at the end of training are the ones in last.pt), the default follows what best.pt was chosen by, and a
checkpoint without the chosen weights is one message with exit code 2."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import cli, tiny_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AVERAGED = """\
ema = true
ema_decay = 0.9
swa = true
swa_start_epoch = 2
checkpoint_every_epochs = 1
"""


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory, one_torch_thread):
    """3 epochs with an EMA and an SWA average from epoch 2 on (and epoch checkpoints)."""
    root = tmp_path_factory.mktemp("weights")
    spec = tiny_spec(root, "avg", root / "runs", epochs=3, steps=8, batch_size=32, extra=AVERAGED)
    assert cli("train", spec, "--set", "optimizer.lr=1e-2") == 0
    return root / "runs" / "avg"


def last_row(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))[-1]


def evaluate(capsys, run_dir, *args):
    capsys.readouterr()
    assert cli("evaluate", run_dir, "--json", *args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == json.loads((run_dir / "eval-val.json").read_text())
    return record


def assert_reproduces(record, row, prefix):
    assert set(record["metrics"]) == {f"val/{k.split('/', 1)[1]}" for k in row if k.startswith(prefix + "/")}
    for key, value in record["metrics"].items():
        want = float(row[prefix + key[len("val"):]])
        assert value == pytest.approx(want, rel=1e-5, abs=1e-7), key


def test_ema_and_swa_weights_evaluate_to_what_the_run_reported(averaged_run, capsys):
    row = last_row(averaged_run)
    assert int(row["epoch"]) == 3 and row["val_swa/loss"] and row["val_ema/loss"]

    ema = evaluate(capsys, averaged_run, "--weights", "ema", "--checkpoint", "last")
    assert ema["weights"] == "ema" and ema["checkpoint"].endswith("last.pt") and ema["epoch"] == 3
    assert_reproduces(ema, row, "val_ema")

    swa = evaluate(capsys, averaged_run, "--weights", "swa")  # the checkpoint defaults to last.pt for SWA
    assert swa["weights"] == "swa" and swa["checkpoint"].endswith("last.pt")
    assert_reproduces(swa, row, "val_swa")

    model = evaluate(capsys, averaged_run, "--weights", "model", "--checkpoint", "last")
    assert_reproduces(model, row, "val")
    assert model["metrics"]["val/loss"] != ema["metrics"]["val/loss"] != swa["metrics"]["val/loss"]

    # the text output says which weights
    assert cli("evaluate", averaged_run, "--weights", "swa") == 0
    assert "last.pt (epoch 3), swa weights, on val" in capsys.readouterr().out


def test_default_weights_follow_what_best_was_chosen_by(averaged_run, tmp_path, capsys):
    # best.pt by val/accuracy: the model's weights
    record = evaluate(capsys, averaged_run)
    assert record["weights"] == "model" and record["checkpoint"].endswith("best.pt")
    # best.pt by the EMA's figure (ema_for_best): the EMA's weights, and they reproduce the best val_ema/accuracy
    spec = tiny_spec(tmp_path, "emabest", tmp_path / "runs", epochs=1, steps=3, extra="ema = true\nema_for_best = true")
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "emabest"
    record = evaluate(capsys, run_dir)
    assert record["weights"] == "ema"
    assert_reproduces(record, last_row(run_dir), "val_ema")


def test_predict_says_which_weights_and_they_change_the_outputs(averaged_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L").save(image)
    probs = {}
    for weights in ("model", "ema", "swa"):
        capsys.readouterr()
        assert cli("predict", averaged_run, image, "--weights", weights, "--json", "--top-k", "10") == 0
        [result] = json.loads(capsys.readouterr().out)
        assert result["weights"] == weights
        assert result["checkpoint"].endswith("last.pt" if weights == "swa" else "best.pt")
        probs[weights] = {t["index"]: t["probability"] for t in result["top_k"]}
    assert probs["model"] != probs["ema"] and probs["model"] != probs["swa"]
    assert cli("predict", averaged_run, image, "--weights", "ema") == 0
    captured = capsys.readouterr()
    assert "best.pt (epoch" in captured.err and "EMA weights" in captured.err
    assert captured.out.startswith(str(image)) and len(captured.out.splitlines()) == 1


def test_a_checkpoint_without_the_chosen_weights_is_one_message(averaged_run, capsys):
    ckpts = averaged_run / "checkpoints"
    cases = [
        # best.pt is epoch 1 or 2 here; epoch 1's SWA average holds no epoch, epoch 2's has stale batch-norm statistics
        (("--checkpoint", ckpts / "epoch-0001.pt", "--weights", "swa"), "its SWA average holds no epoch yet"),
        (("--checkpoint", ckpts / "epoch-0002.pt", "--weights", "swa"), "has no batch-norm statistics of its own"),
        (("--checkpoint", "best", "--weights", "swa"), "use --checkpoint last of a finished run"),
    ]
    for command in ("evaluate", "predict"):
        for args, message in cases:
            extra = ("x.png",) if command == "predict" else ()
            capsys.readouterr()
            assert cli(command, averaged_run, *extra, *args) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exc:  # argparse: not a choice
        cli("evaluate", averaged_run, "--weights", "best")
    assert exc.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err


def test_a_run_without_an_average_refuses_ema_and_swa(tmp_path, capsys):
    spec = tiny_spec(tmp_path, "plain", tmp_path / "runs", epochs=1, steps=2)
    assert cli("train", spec) == 0
    for weights in ("ema", "swa"):
        capsys.readouterr()
        assert cli("evaluate", tmp_path / "runs" / "plain", "--weights", weights, "--checkpoint", "best") == 2
        err = capsys.readouterr().err
        assert f"holds no {weights.upper()} weights (the run did not set trainer.{weights} = true)" in err
        assert err.count("\n") == 1
    assert not (tmp_path / "runs" / "plain" / "eval-val.json").exists()
