"""The ready specs for one's own data, ``specs/imagefolder.toml`` and ``specs/csv-regression.toml``, trained as a user
runs them: from a working directory holding ``data/`` (a few dozen tiny PNGs in class folders; a csv manifest of
images and numbers), with their ``pretrained = true`` weights read from a Hugging Face cache made on disk
(``HF_HUB_OFFLINE=1``: nothing is downloaded), cut to two steps with ``--set``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
from conftest import run_cli, subprocess_env
from helpers_datafiles import CLASSES, write_image_folder, write_regression_csv
from helpers_hub import hub_cache

REPO = Path(__file__).resolve().parents[2]
IMAGEFOLDER = REPO / "specs" / "imagefolder.toml"
CSV_REGRESSION = REPO / "specs" / "csv-regression.toml"
SHORT = ["--set", "trainer.max_steps_per_epoch=2", "--set", "run.epochs=1", "--set", "data.num_workers=0",
         "--set", "data.batch_size=16"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A working directory with the data the specs name, and the environment of an offline node."""
    import torch

    from plugtrain.core.registry import get_registry

    root = tmp_path_factory.mktemp("own-data")
    write_image_folder(root / "data" / "images")
    write_regression_csv(root / "data" / "regression" / "train.csv")
    torch.manual_seed(1)  # a stand-in for timm/resnet18.a1_in1k: the same architecture, 1000 classes
    hub_cache(root / "hf", "timm/resnet18.a1_in1k", get_registry().get("backbones", "resnet18").build({},
                                                                                                     num_classes=1000))
    env = subprocess_env(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", PLUGTRAIN_PLAIN="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(key, None)
    return root, env


def test_the_ready_specs_check_and_name_their_weights(work):
    root, env = work
    proc = run_cli("check", IMAGEFOLDER, CSV_REGRESSION, cwd=root, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr
    proc = run_cli("weights", "fetch", IMAGEFOLDER, CSV_REGRESSION, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("pretrained = hf-hub:timm/resnet18.a1_in1k: cached") == 2


@pytest.mark.slow
def test_the_ready_specs_train_on_files_the_test_wrote(work):
    root, env = work
    proc = run_cli("train", IMAGEFOLDER, CSV_REGRESSION, *SHORT, cwd=root, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out

    head = next(line for line in proc.stdout.splitlines() if line.startswith("imagefolder: starting;"))
    train, val = map(int, re.search(r"(\d+) train / (\d+) val samples", head).groups())
    assert f"{len(CLASSES)} classes" in head and train + val == 3 * 16 and 7 <= val <= 12, head
    head = next(line for line in proc.stdout.splitlines() if line.startswith("csv-regression: starting;"))
    assert "32 train / 8 val samples" in head, head

    for name, metric in (("imagefolder", "val/accuracy"), ("csv-regression", "val/mae")):
        run_dir = root / "runs" / name  # output_dir is relative to the working directory
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        assert len(rows) == 1 and math.isfinite(float(rows[0][metric])), rows
        assert math.isfinite(float(rows[0]["train/loss"]))
        assert (run_dir / "checkpoints" / "best.pt").is_file()
