"""Bad data input is found by ``plugtrain check`` where the spec says it, and refused by the dataset before anything
is written (issue 21, items 3-5): numeric dataset parameters with no sense outside a range (``cache_max_gb``,
counts), webdataset shard patterns braceexpand refuses or expands to names that are no shard, URLs webdataset cannot
or may not open (``pipe:`` under ``WDS_SECURE=1``), and a cache that is refused leaves nothing in the cache folder.

Real datasets on real files, the real command line in process (``cli_run``); nothing mocked.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import cli
from helpers_data import write_folder

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry
from plugtrain.plugins.datasets.webdataset import MAX_SHARDS, shard_problems


def _build(name: str, params: dict, seed: int = 0):
    return get_registry().get("datasets", name).build(params, seed=seed, on_error="raise", image_size=None)


def _spec(tmp_path: Path, data: str, extra: str = "") -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""[run]
name = "bad-data"
output_dir = "{(tmp_path / 'runs').as_posix()}"
epochs = 1

[data]
{data}
batch_size = 8
num_workers = 0

[backbone]
name = "test_efficientnet"

[loss]
name = "CrossEntropy"

[optimizer]
name = "AdamW"
lr = 1e-3
{extra}""", encoding="utf-8")
    return spec


def _line_col(spec: Path, text: str) -> str:
    for n, line in enumerate(spec.read_text().splitlines(), 1):
        if text in line:
            return f"{n}:{line.index(text) + 1}"
    raise AssertionError(text)


# -- numeric ranges ---------------------------------------------------------------------------------------------------

DATASETS = {
    "imagefolder": 'dataset = "imagefolder"\nroot = "{root}"',
    "csv": 'dataset = "csv"\ncsv = "{root}/labels.csv"',
    "webdataset": 'dataset = "webdataset"\nshards = "{root}/train-{{000..001}}.tar"',
}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("value", ["0", "-2.5", "0.0"])
def test_check_refuses_a_cache_max_gb_that_is_not_positive_where_the_spec_says_it(tmp_path, cli_run, dataset, value):
    spec = _spec(tmp_path, DATASETS[dataset].format(root=tmp_path.as_posix()) + f'\ncache = "disk"\n'
                                                                                 f"cache_max_gb = {value}")
    proc = cli_run("check", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, col = _line_col(spec, f"cache_max_gb = {value}").split(":")
    where = f"{line}:{int(col) + len('cache_max_gb = ')}"
    assert f"{spec}:{where}: data.cache_max_gb must be > 0, got {value}" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_check_refuses_counts_below_one_in_datasets_metrics_and_loggers(tmp_path, cli_run):
    spec = _spec(tmp_path, f'dataset = "csv"\ncsv = "{tmp_path.as_posix()}/labels.csv"\nnum_classes = 0',
                 '\n[[metrics]]\nname = "accuracy"\ntop_k = 0\n\n[[loggers]]\nname = "tensorboard"\nflush_secs = -1\n')
    proc = cli_run("check", spec)
    assert proc.returncode == 2, proc.stderr
    for key, text, message in (("num_classes", "0", "data.num_classes must be >= 1, got 0"),
                               ("top_k", "0", "metrics[0].top_k must be >= 1, got 0"),
                               ("flush_secs", "-1", "loggers[0].flush_secs must be > 0, got -1")):
        line, col = _line_col(spec, f"{key} = {text}").split(":")
        assert f"{spec}:{line}:{int(col) + len(key) + 3}: {message}" in proc.stderr, proc.stderr


# -- a refused cache leaves nothing behind ------------------------------------------------------------------------------


def test_a_cache_refused_for_its_size_leaves_no_lock_and_no_folder(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    cache_dir = tmp_path / "user-cache" / "plugtrain"
    with pytest.raises(PlugtrainError, match="more than cache_max_gb allows"):
        _build("imagefolder", {"root": str(root), "cache": "disk", "cache_dir": str(cache_dir), "cache_max_gb": 1e-9})
    assert not cache_dir.exists(), sorted(str(p) for p in cache_dir.rglob("*"))
    # an existing cache folder is kept as it was (only what the refused cache made goes)
    (cache_dir / "decoded").mkdir(parents=True)
    (cache_dir / "decoded" / "mine.txt").write_text("user file")
    with pytest.raises(PlugtrainError, match="more than cache_max_gb allows"):
        _build("imagefolder", {"root": str(root), "cache": "disk", "cache_dir": str(cache_dir), "cache_max_gb": 1e-9})
    assert sorted(p.name for p in (cache_dir / "decoded").iterdir()) == ["mine.txt"]


# -- webdataset shard names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("names", "fragment"), [
    ("shards-{000..009.tar", "unbalanced braces: the '{' at character 8 is never closed"),
    ("shards-000..009}.tar", "unbalanced braces: the '}' at character 16 closes no '{'"),
    ("s-{{0..2}.tar", "the '{' at character 3 is never closed"),
    ("s-{}.tar", "the empty braces '{}' at character 3 expand to nothing"),
    ("s-{0..x}.tar", "'{0..x}' at character 3 is not a range"),
    ("s-{1..}.tar", "'{1..}' at character 3 is not a range"),
    ("s-{001}.tar", "'{001}' at character 3 is neither a list nor a range"),
    ("s-{0..9999999999}.tar", f"more than {MAX_SHARDS:,} shard names"),
    ("s-{a,a}.tar", "'s-a.tar' is named twice"),
    (["a.tar", "b-{0..1}.tar", "b-1.tar"], "'b-1.tar' is named twice"),
    (["a.tar", "b-{0..1.tar"], "item 2 'b-{0..1.tar': unbalanced braces"),
    ([], "an empty list names no shard"),
    ("", "an empty shard name"),
    ("htps://host/s-{0..3}.tar", "webdataset opens no htps:// URL. Did you mean 'https'"),
    ("pipe:", "a pipe: URL without a command"),
])
def test_shard_patterns_that_name_no_shard_are_refused_with_the_place(names, fragment):
    problems = shard_problems(names)
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize("names", ["s-{000..009}.tar", "s-{a..f}-{0..3..2}.tar", "s-{x,y}{1,2}.tar",
                                   "pipe:cat ${DATA}/s-{0..3}.tar", "https://h/s-{000..002}.tar", ["a.tar", "b.tar"],
                                   r"s-\{literal\}.tar"])
def test_good_shard_patterns_pass(names):
    assert shard_problems(names) == []


def test_the_dataset_refuses_a_bad_pattern_with_one_message_and_a_huge_range_without_expanding_it(tmp_path):
    with pytest.raises(PlugtrainError) as caught:
        _build("webdataset", {"shards": str(tmp_path / "shards-{000..009.tar")})
    assert str(caught.value) == (f"webdataset: shards: '{tmp_path}/shards-{{000..009.tar': unbalanced braces: the '{{' "
                                 f"at character {len(str(tmp_path)) + 9} is never closed")
    start = time.monotonic()
    with pytest.raises(PlugtrainError, match="val_shards: .* more than 100,000 shard names"):
        _build("webdataset", {"shards": str(tmp_path / "a.tar"), "val_shards": str(tmp_path / "v-{0..999999999}.tar")})
    assert time.monotonic() - start < 5  # counted, never expanded (a billion names would fill the memory)


def test_check_points_at_each_bad_shard_parameter(tmp_path, cli_run):
    spec = _spec(tmp_path, 'dataset = "webdataset"\nshards = "shards-{000..009.tar"\nval_shards = "v-{}.tar"\n'
                           'test_shards = ["t-0.tar", "s3://bucket/t-1.tar"]')
    proc = cli_run("check", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(str(spec))]
    at = {key: _line_col(spec, text) for key, text in (("shards", '"shards-'), ("val", '"v-'), ("test", '["t-0'))}
    assert lines == [
        f"{spec}:{at['shards']}: data.shards: 'shards-{{000..009.tar': unbalanced braces: the '{{' at character 8 is "
        "never closed",
        f"{spec}:{at['val']}: data.val_shards: 'v-{{}}.tar': the empty braces '{{}}' at character 3 expand to nothing "
        "(a brace pattern is a list {a,b} or a range {000..009})",
        f"{spec}:{at['test']}: data.test_shards: item 2 's3://bucket/t-1.tar': webdataset opens no s3:// URL. It opens "
        "ais://, ftps://, gs://, hf://, htgs://, http://, https://, scp://, sftp://, pipe:COMMAND and local paths",
    ], proc.stderr


def test_a_pipe_url_under_wds_secure_is_refused_by_check_and_before_the_cache_folder_is_touched(
        tmp_path, cli_run, monkeypatch):
    monkeypatch.setenv("WDS_SECURE", "1")
    cache_dir = tmp_path / "user-cache"
    spec = _spec(tmp_path, f'dataset = "webdataset"\nshards = "pipe:cat {tmp_path.as_posix()}/train-0.tar"\n'
                           f'cache_dir = "{cache_dir.as_posix()}"')
    proc = cli_run("check", spec)
    assert proc.returncode == 2, proc.stderr
    where = _line_col(spec, '"pipe:')
    assert (f"{spec}:{where}: data.shards: 'pipe:cat {tmp_path}/train-0.tar' is a pipe: URL (a "
            "shell command), and WDS_SECURE=1 refuses them") in proc.stderr
    with pytest.raises(PlugtrainError, match="WDS_SECURE=1 refuses them"):
        _build("webdataset", {"shards": f"pipe:cat {tmp_path}/train-0.tar", "cache_dir": str(cache_dir)})
    assert not cache_dir.exists()  # no shards/ folder, no lock file: refused before anything was written
    proc = cli_run("train", spec)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not cache_dir.exists() and not (tmp_path / "runs").exists()


def test_a_folder_of_shards_is_not_a_pattern(tmp_path):
    """A folder written by ``plugtrain shards`` is read through its metadata, never taken for a bad pattern."""
    root = write_folder(tmp_path / "images", per_class=3)
    assert cli("shards", root, "--out", tmp_path / "out{1}", "--shard-size", 4) == 0
    from plugtrain.plugins.datasets.webdataset import validate

    assert validate({"shards": str(tmp_path / "out{1}")}, {}) == []
    assert len(_build("webdataset", {"shards": str(tmp_path / "out{1}")}).train) > 0
