"""``plugtrain predict RUN FOLDER|GLOB... --out FILE.csv|FILE.jsonl``: the batch form streams real digit PNGs through a
DataLoader and gives exactly what ``predict`` gives file by file; unreadable files are listed and skipped (or exit 2
with ``--on-error raise``); an existing results file is never overwritten unasked, nor a half-written one left."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import cli
from helpers_commands import train_digits, write_digit_pngs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOP_K = 3


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_torch_thread):
    """A tiny real run on sklearn-digits."""
    return train_digits(tmp_path_factory.mktemp("batch_predict"), 1, 4, 16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 digit PNGs: 8 at the top, 4 in a subfolder; a text file that is not an image."""
    root = tmp_path_factory.mktemp("digit_pngs")
    top, _ = write_digit_pngs(root, 8, validation=True)
    (root / "sub").mkdir()
    sub, _ = write_digit_pngs(root / "sub", 4, seed=1)
    (root / "notes.txt").write_text("not an image")
    return root, sorted(map(str, top)) + sorted(map(str, sub))


@pytest.fixture(scope="module")
def one_by_one(digits_run, folder):
    """``predict --json`` of the same files, given one by one (today's form): path -> result."""
    import contextlib
    import io

    _, files = folder
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli("predict", digits_run, *files, "--json", "--top-k", TOP_K) == 0
    return {r["image"]: r for r in json.loads(printed.getvalue())}


def same(got_top, want_top):
    assert [t["class"] for t in got_top] == [t["class"] for t in want_top]
    for g, w in zip(got_top, want_top, strict=True):
        assert abs(float(g["probability"]) - w["probability"]) <= 1e-6


def test_folder_to_csv_equals_predict_file_by_file(digits_run, folder, one_by_one, tmp_path, cli_run):
    root, files = folder
    out = tmp_path / "preds.csv"
    done = cli_run("predict", digits_run, root, "--out", out, "--top-k", TOP_K, "--batch-size", 5,
                   "--num-workers", 0)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == sorted(files)  # recursive; notes.txt left out
    for r in rows:
        got = [{"class": r[f"top{n}_class"], "probability": r[f"top{n}_probability"]} for n in range(1, TOP_K + 1)]
        same(got, one_by_one[r["path"]]["top_k"])
    assert "12/12 images" in done.stderr and not list(tmp_path.glob(".*"))


def test_glob_to_jsonl_with_a_worker_equals_predict_file_by_file(digits_run, folder, one_by_one, tmp_path, cli_run):
    root, files = folder
    out = tmp_path / "preds.jsonl"
    done = cli_run("predict", digits_run, f"{root}/**/*.png", "--out", out, "--top-k", TOP_K, "--num-workers", 1)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == sorted(files)
    for r in rows:
        same(r["top_k"], one_by_one[r["path"]]["top_k"])


def test_unreadable_files_are_listed_and_skipped_or_exit_2(digits_run, folder, tmp_path, cli_run):
    root, files = folder
    bad = tmp_path / "imgs"
    bad.mkdir()
    for f in files[:3]:
        (bad / f"ok_{files.index(f)}.png").write_bytes(open(f, "rb").read())
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "preds.csv"
    done = cli_run("predict", digits_run, bad, "--out", out, "--batch-size", 2)
    assert done.returncode == 0, done.stderr
    assert f"{bad / 'broken.png'}: unreadable, skipped" in done.stderr
    assert "warning: 1 unreadable file(s) skipped" in done.stderr and "Traceback" not in done.stderr
    assert len(list(csv.DictReader(out.open()))) == 3

    raised = tmp_path / "raised.csv"
    done = cli_run("predict", digits_run, bad, "--out", raised, "--on-error", "raise")
    assert done.returncode == 2
    assert str(bad / "broken.png") in done.stderr and "Traceback" not in done.stderr
    assert not raised.exists() and not list(tmp_path.glob(".*"))


def test_bad_paths_and_existing_out_are_refused(digits_run, folder, tmp_path, cli_run):
    root, _ = folder
    out = tmp_path / "keep.csv"
    out.write_text("mine\n")
    done = cli_run("predict", digits_run, root, "--out", out)
    assert done.returncode == 2 and "--overwrite" in done.stderr and out.read_text() == "mine\n"
    assert cli_run("predict", digits_run, root, "--out", out, "--overwrite").returncode == 0
    assert out.read_text().startswith("path,")

    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli_run("predict", digits_run, empty)
    assert done.returncode == 2 and "no image files" in done.stderr
    done = cli_run("predict", digits_run, tmp_path / "nope", "--out", tmp_path / "x.jsonl")
    assert done.returncode == 2 and "no such file or folder" in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_folder_without_out_prints_a_line_per_image(digits_run, folder, cli_run):
    root, files = folder
    done = cli_run("predict", digits_run, root, "--top-k", 1)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == files


METRIC_SPEC = """\
[run]
name = "metric"
output_dir = "{out}"
epochs = 1
task = "metric_learning"

[data]
dataset = "sklearn-digits"
image_size = 16
batch_size = 16
num_workers = 0

[backbone]
name = "test_efficientnet"
in_chans = 1
embedding_dim = 8

[loss]
name = "ArcFace"

[optimizer]
name = "AdamW"
lr = 3e-3

[trainer]
max_steps_per_epoch = 2
"""


def test_metric_learning_embeddings_go_to_npy_beside_the_results(folder, tmp_path, cli_run):
    """A metric-learning run's batch predictions: ``path,row`` lines and row ``row`` of FILE.npy is the embedding
    :meth:`Predictor.outputs` gives that file alone; an existing FILE.npy is not overwritten unasked."""
    import numpy as np

    from plugtrain.inference import open_model

    spec = tmp_path / "metric.toml"
    spec.write_text(METRIC_SPEC.format(out=(tmp_path / "runs").as_posix()))
    assert cli("train", spec) == 0
    run, (root, files) = tmp_path / "runs" / "metric", folder
    out = tmp_path / "emb.jsonl"
    done = cli_run("predict", run, root, "--out", out, "--batch-size", 5)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    vectors = np.load(tmp_path / "emb.npy")
    assert [r["path"] for r in rows] == files and vectors.shape == (len(files), 8)
    want = open_model(run).outputs(files[:2]).numpy()
    assert np.abs(vectors[[rows[0]["row"], rows[1]["row"]]] - want).max() <= 1e-6

    out.unlink()
    done = cli_run("predict", run, root, "--out", out)
    assert done.returncode == 2 and "emb.npy exists" in done.stderr and not out.exists()
    assert cli_run("predict", run, root).returncode == 2  # embeddings need a results file
