"""plugtrain-mlflow against real MLflow: tiny real training runs, everything read back with ``mlflow.MlflowClient``.

The runs train timm's ``test_efficientnet`` on scikit-learn's digits at 16x16 for a few steps (a second or two of
training), log to the default local SQLite store ``<output_dir>/mlflow.db``, and the tests read params, metric
histories, artifacts and images back from that store. Nothing is mocked and nothing leaves this machine: the
"unreachable server" is a closed port on 127.0.0.1.

No conftest.py here (the core suite's ``tests/conftest.py`` is imported by name, so a second ``conftest`` module
would shadow it when both suites run in one pytest session): the spec, the stopper plugin and the child environment
come from the core suite's ``tests/helpers_trackers.py``, shared with plugtrain-wandb's tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core suite's helpers, run alone too
import conftest  # noqa: E402
import helpers_trackers as trackers  # noqa: E402
from conftest import cli, free_port  # noqa: E402
from helpers_faults import torchrun_cmd  # noqa: E402
from helpers_trackers import csv_rows, stopper_path  # noqa: E402

# MLflow 3.17 with SQLAlchemy 2.1 warns about its own use of `noload`: not ours to fix
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")]
one_torch_thread = conftest.one_torch_thread  # the core suite's fixture, for this module's tests

MLFLOW = '[[loggers]]\nname = "mlflow"\n'


def write_spec(folder: Path, name: str = "tiny", epochs: int = 2, loggers: str = MLFLOW) -> Path:
    return trackers.write_spec(folder, loggers, name, epochs)


def child_env(paths: list[Path] = (), **extra: str) -> dict[str, str]:
    return trackers.tracker_env("MLFLOW_", paths, **extra)


def plugtrain(*args: Any, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return trackers.plugtrain(*args, env=env or child_env(), timeout=timeout)


@pytest.fixture
def clean_mlflow_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)


def client_for(output_dir: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{output_dir.resolve()}/mlflow.db")


def histories(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run: key -> [(step, value), ...] in step order (duplicates kept, so they show)."""
    run = client.get_run(run_id)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def image_steps(paths: list[str], key: str) -> list[int]:
    """Steps of the PNGs MLflow stored for image ``key`` (``images/<key with / as ~>+step+<n>+...png``)."""
    name = key.replace("/", "~")
    return sorted(int(m.group(1)) for p in paths
                  if (m := re.match(rf"^images/{re.escape(name)}\+step\+(\d+)\+.*(?<!compressed)\.png$", p)))


# -- the registry: listed, shown, in the schema; mlflow not imported to list ------------------------------------------


def test_listed_with_its_distribution_without_importing_mlflow():
    trackers.assert_listed_without_importing("mlflow", child_env())


def test_show_and_schema(capsys):
    assert cli("show", "loggers", "mlflow", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in shown["params"]}
    assert set(params) == {"tracking_uri", "experiment", "run_name", "tags", "log_checkpoint", "artifact_location",
                           "connect_timeout"}
    assert params["log_checkpoint"]["default"] is False and params["tags"]["annotation"] == "dict[str, str] | None"
    assert "mlflow.json" in shown["doc"]
    assert cli("schema") == 0
    loggers = json.loads(capsys.readouterr().out)["definitions"]["loggers"]
    assert "mlflow" in loggers["properties"]["name"]["enum"]
    (branch,) = [b["then"] for b in loggers["allOf"] if b["if"]["properties"]["name"]["enum"] == ["mlflow"]]
    assert branch["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert branch["additionalProperties"] is False


def test_check_rejects_a_misspelled_parameter(tmp_path, capsys):
    spec = write_spec(tmp_path, loggers='[[loggers]]\nname = "mlflow"\ntracking_url = "x"\n')
    assert cli("check", spec) == 2
    err = capsys.readouterr().err
    assert "tracking_url" in err and "tracking_uri" in err


@pytest.mark.parametrize(("uri", "fragment"), [
    ("http:/host", "'http:/host' is not a server URL: write http://HOST[:PORT] (two slashes, then the host)"),
    ("https:mlflow.example", "is not a server URL: write https://HOST[:PORT]"),
    ("http://", "'http://' is not a server URL"),
    ("http://host:80x", "the port after the host is not a number in 0..65535"),
    ("htp://x", "'htp://x': MLflow knows no htp: tracking store. Did you mean 'http'"),
    ("localhost:5000", "'localhost:5000' has no scheme: a server is http://localhost:5000"),
    ("file:/nonexistent dir", "a URI holds no spaces (write %20 for one: 'file:/nonexistent%20dir')"),
    ("file://tmp/mlruns", "names the host 'tmp': a file URI is file:///ABSOLUTE/PATH (three slashes; "
                          "file:///tmp/mlruns if that is what was meant)"),
    ("file:mlruns", "'file:mlruns' is not an absolute file URI"),
    ("sqlite://t.db", "'sqlite://t.db' is not a SQLite URI: write sqlite:///PATH (three slashes"),
    ("postgresql:db", "is not a database URI: write postgresql://USER@HOST/DB"),
    ("   ", "an empty tracking_uri names no store"),
])
def test_check_refuses_a_malformed_tracking_uri_where_the_spec_says_it(tmp_path, capsys, uri, fragment):
    spec = write_spec(tmp_path, loggers=f'[[loggers]]\nname = "mlflow"\ntracking_uri = "{uri}"\n')
    line = spec.read_text().splitlines().index(f'tracking_uri = "{uri}"') + 1
    assert cli("check", spec) == 2
    err = capsys.readouterr().err
    assert f"{spec}:{line}:16: loggers[0].tracking_uri: " in err and fragment in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_check_refuses_a_local_store_that_cannot_be_made_and_a_bad_environment_uri(tmp_path, capsys, monkeypatch,
                                                                                   clean_mlflow_env):
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    for uri in (f"file://{afile}/mlruns", f"sqlite:///{afile}/sub/t.db", f"{afile}/mlruns"):
        spec = write_spec(tmp_path, loggers=f'[[loggers]]\nname = "mlflow"\ntracking_uri = "{uri}"\n')
        assert cli("check", spec) == 2, uri
        assert f"{afile} is a file, not a folder" in capsys.readouterr().err, uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http:/tracking.example:5000")
    spec = write_spec(tmp_path)
    assert cli("check", spec) == 2
    err = capsys.readouterr().err
    assert ("loggers[0] (logger 'mlflow'): $MLFLOW_TRACKING_URI (the default tracking_uri): "
            "'http:/tracking.example:5000' is not a server URL") in err


def test_the_logger_itself_refuses_a_malformed_uri_before_writing_anything(tmp_path):
    from plugtrain_mlflow.plugin import MlflowLogger

    from plugtrain.core.errors import PlugtrainError

    run_dir = tmp_path / "runs" / "tiny"
    with pytest.raises(PlugtrainError, match=r"tracking_uri: 'http:/host' is not a server URL"):
        MlflowLogger(run_dir, {"run": {"name": "tiny", "output_dir": str(tmp_path / "runs")}}, tracking_uri="http:/host")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com/prefix", "sqlite:///t.db",
                                 "t.db", "mlruns", "file:///tmp/mlruns", "file:/tmp/mlruns", "databricks",
                                 "databricks://profile", "postgresql+psycopg2://user@host:5432/db",
                                 "file:///tmp/a%20b"])
def test_well_formed_tracking_uris_pass(uri):
    from plugtrain_mlflow.plugin import tracking_uri_problem

    assert tracking_uri_problem(uri) is None


# -- pure helpers ------------------------------------------------------------------------------------------------------


def test_tracking_uri_defaults_and_relative_paths(tmp_path, clean_mlflow_env, monkeypatch):
    from plugtrain_mlflow.plugin import resolve_tracking_uri

    out = tmp_path / "out"
    assert resolve_tracking_uri(None, out) == (f"sqlite:///{out}/mlflow.db", out / "mlartifacts")
    assert resolve_tracking_uri("sqlite:///sub/t.db", out) == (f"sqlite:///{out}/sub/t.db", out / "sub" / "mlartifacts")
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/abs.db", out)[0] == f"sqlite:///{tmp_path}/abs.db"
    assert resolve_tracking_uri("track.db", out)[0] == f"sqlite:///{out}/track.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", out) == ("http://127.0.0.1:5000", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None, out) == ("http://tracking.example:5000", None)


def test_spec_flattened_to_params_within_mlflows_limits():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    from plugtrain_mlflow.plugin import flatten_spec, metric_key

    params = flatten_spec({"optimizer": {"name": "AdamW", "lr": 0.003}, "trainer": {"compile": False},
                           "augmentations": {"train": [{"name": "Affine", "p": 0.8}]}, "backbone": {"x": "y" * 9000},
                           "data": {"class_subset": []}})
    assert params["optimizer.lr"] == "0.003" and params["optimizer.name"] == "AdamW"
    assert params["trainer.compile"] == "false"
    assert json.loads(params["augmentations.train"]) == [{"name": "Affine", "p": 0.8}]
    assert params["data.class_subset"] == "[]"
    assert len(params["backbone.x"]) == MAX_PARAM_VAL_LENGTH and params["backbone.x"].endswith("...[truncated]")
    assert metric_key("val/top5") == "val/top5" and metric_key("a%b") == "a_b"


# -- a run, read back ----------------------------------------------------------------------------------------------------


def test_run_params_metrics_artifacts_images_then_resume_after_completion(tmp_path, clean_mlflow_env, one_torch_thread):
    long_tag = "v" * 7000  # the loggers array param (which holds the tags) exceeds MLflow's param value limit
    spec = write_spec(tmp_path, loggers=textwrap.dedent(f'''\
        [[loggers]]
        name = "mlflow"
        log_checkpoint = true
        tags = {{ team = "vision", long = "{long_tag}" }}

        [[loggers]]
        name = "console"

        [[metrics]]
        name = "embeddings"
        '''))
    spec.write_text(spec.read_text().replace("[augmentations]\n", "[augmentations]\nsave_samples = 4\n"))
    assert cli("train", spec) == 0
    out, run_dir = tmp_path / "runs", tmp_path / "runs" / "tiny"
    assert (out / "mlflow.db").is_file() and (out / "mlartifacts").is_dir()
    state = json.loads((run_dir / "mlflow.json").read_text())
    client = client_for(out)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "plugtrain"
    assert run.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri())
    assert run.data.tags["team"] == "vision" and run.data.tags["long"] == long_tag
    assert run.data.tags["plugtrain.run_dir"] == str(run_dir.resolve())

    params = run.data.params
    assert params["optimizer.name"] == "AdamW" and float(params["optimizer.lr"]) == 3e-3
    assert params["run.epochs"] == "2" and params["backbone.name"] == "test_efficientnet"
    assert params["data.image_size"] == "16" and params["trainer.max_steps_per_epoch"] == "3"
    assert json.loads(params["augmentations.train"])[0]["name"] == "Affine"
    assert len(params["loggers"]) <= 6000 and params["loggers"].endswith("...[truncated]")

    hist = histories(client, state["run_id"])
    rows = csv_rows(run_dir)
    assert [int(r["step"]) for r in rows] == [3, 6]
    for key in ("train/loss", "train/lr", "val/loss", "val/accuracy", "epoch"):
        assert [s for s, _ in hist[key]] == [3, 6], key
        assert [v for _, v in hist[key]] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key
    # the per-step metrics (log_every_steps = 1): every optimizer step, at its global step, read back from the store
    for key in ("step/loss", "step/lr", "step/grad_norm", "step/throughput"):
        assert [s for s, _ in hist[key]] == [1, 2, 3, 4, 5, 6], key
    assert all(v > 0 for _, v in hist["step/loss"] + hist["step/throughput"] + hist["step/lr"])
    assert dict(hist["step/lr"])[6] == pytest.approx(float(rows[1]["train/lr"]), rel=1e-6)  # the lr step 6 used

    paths = artifact_paths(client, state["run_id"])
    assert {"spec.toml", "env.json", "checkpoints/best.pt"} <= set(paths)
    assert image_steps(paths, "val/confusion_matrix") == [3, 6]
    assert image_steps(paths, "samples/train") == [0]
    emb = tmp_path / "dl" / "emb"
    client.download_artifacts(state["run_id"], "embeddings/val/embeddings/step-00000006", str(emb))
    vectors = (emb / "step-00000006" / "vectors.tsv").read_text().splitlines()
    labels = (emb / "step-00000006" / "metadata.tsv").read_text().splitlines()
    assert len(vectors) == len(labels) > 0 and all(len(v.split("\t")) == 10 for v in vectors)  # 10 logits each
    local = Path(client.download_artifacts(state["run_id"], "checkpoints/best.pt", str(tmp_path / "dl")))
    assert local.read_bytes() == (run_dir / "checkpoints" / "best.pt").read_bytes()
    spec_artifact = Path(client.download_artifacts(state["run_id"], "spec.toml", str(tmp_path / "dl")))
    assert spec_artifact.read_text() == (run_dir / "spec.toml").read_text()

    # --resume auto of the completed run, one epoch more: the same MLflow run goes on at step 9, nothing repeated
    assert cli("train", spec, "--resume", "auto", "--set", "run.epochs=3") == 0
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == state["run_id"]
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["run.epochs"] == "2"  # MLflow params never change ...
    assert run.data.tags["plugtrain.params_changed_on_resume"] == "run.epochs"  # ... the change is noted
    hist = histories(client, state["run_id"])
    for key in ("train/loss", "val/accuracy", "epoch"):
        assert [s for s, _ in hist[key]] == [3, 6, 9], key
    assert [v for _, v in hist["epoch"]] == [1, 2, 3]
    assert [s for s, _ in hist["step/loss"]] == list(range(1, 10))
    assert image_steps(artifact_paths(client, state["run_id"]), "val/confusion_matrix") == [3, 6, 9]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.slow
def test_preempted_and_killed_run_resumed_continues_the_same_run_without_duplicated_steps(tmp_path):
    """Attempt 1 gets SIGTERM at epoch 1 (exit 143, last.pt written, the MLflow run KILLED). Attempt 2 (--resume auto)
    logs epoch 2 and is SIGKILLed before epoch 2's last.pt (the MLflow run stays RUNNING). Attempt 3 replays epoch 2
    from epoch 1's checkpoint and finishes: one MLflow run, one value per step."""
    spec = write_spec(tmp_path, epochs=3, loggers=textwrap.dedent('''\
        [[loggers]]
        name = "mlflow"

        [[loggers]]
        name = "test-stopper"
        at_epoch = 1
        how = "term"

        [[loggers]]
        name = "test-stopper"
        at_epoch = 2
        how = "kill"
        '''))
    env = child_env([stopper_path(tmp_path / "plugins")])
    run_dir, out = tmp_path / "runs" / "tiny", tmp_path / "runs"

    preempted = plugtrain("train", spec, env=env)
    assert preempted.returncode == 143, preempted.stderr
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    client = client_for(out)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [s for s, _ in histories(client, run_id)["train/loss"]] == [3]

    killed = plugtrain("train", spec, "--resume", "auto", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody could close it
    assert [s for s, _ in histories(client, run_id)["train/loss"]] == [3, 6]

    resumed = plugtrain("train", spec, "--resume", "auto", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 2, batch 0" in resumed.stdout  # epoch 2 is replayed from epoch 1's checkpoint
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    hist = histories(client, run_id)
    for key in ("train/loss", "train/lr", "val/loss", "val/accuracy", "epoch"):
        assert [s for s, _ in hist[key]] == [3, 6, 9], key
    for key in ("step/loss", "step/lr"):  # the replayed steps 4-6 were not logged again
        assert [s for s, _ in hist[key]] == list(range(1, 10)), key
    # the value kept for step 6 is the one logged before the kill; the exact resume recomputed the same
    rows = {int(r["step"]): r for r in csv_rows(run_dir)}
    assert dict(hist["val/loss"])[6] == pytest.approx(float(rows[6]["val/loss"]), rel=1e-5)
    assert image_steps(artifact_paths(client, run_id), "val/confusion_matrix") == [3, 6, 9]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for attempt in (preempted, killed, resumed):
        assert "mlflow" not in attempt.stderr.lower(), attempt.stderr  # MLflow's set-up chatter is kept quiet


@pytest.mark.slow
def test_torchrun_two_processes_with_an_elastic_restart_make_one_mlflow_run(tmp_path):
    """2 processes (gloo on CPU), rank 0 killed after logging epoch 2; torchrun restarts the group, which resumes from
    last.pt by itself: one MLflow run, each step once."""
    spec = write_spec(tmp_path, epochs=3, loggers='[[loggers]]\nname = "mlflow"\nexperiment = "ddp"\n\n'
                                                  '[[loggers]]\nname = "test-stopper"\nat_epoch = 2\n')
    env = child_env([stopper_path(tmp_path / "plugins")])
    proc = subprocess.run(torchrun_cmd("train", spec, max_restarts=1), capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "stopped-kill-2").is_file()  # the restart did happen
    env_json = json.loads((run_dir / "env.json").read_text())
    assert env_json["world_size"] == 2 and len(env_json.get("resumes", [])) == 1
    client = client_for(tmp_path / "runs")
    exp = client.get_experiment_by_name("ddp")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert run.info.status == "FINISHED"
    hist = histories(client, run.info.run_id)
    for key in ("train/loss", "val/accuracy", "epoch"):
        assert [s for s, _ in hist[key]] == [3, 6, 9], key


# -- failures before training ---------------------------------------------------------------------------------------------


def test_unreachable_server_exits_2_with_one_message_and_no_run_dir(tmp_path, clean_mlflow_env, one_torch_thread, capfd):
    port = free_port()  # bound and released: nothing listens there
    spec = write_spec(tmp_path, loggers=f'[[loggers]]\nname = "mlflow"\ntracking_uri = "http://127.0.0.1:{port}"\n'
                                        'connect_timeout = 2\n')
    t0 = time.monotonic()
    assert cli("train", spec) == 2
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].endswith(f"[loggers] mlflow: cannot reach the tracking server http://127.0.0.1:{port} "
                             "(connection refused; connect_timeout = 2 s)")
    assert not (tmp_path / "runs" / "tiny").exists()
    assert elapsed < 60, elapsed  # data and model are built first; the check itself takes a moment
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the short-check settings were undone

    # a server that accepts the connection and never answers: refused after connect_timeout, not MLflow's 120 s
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        spec.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", spec.read_text()))
        t0 = time.monotonic()
        assert cli("train", spec) == 2
        check = time.monotonic() - t0
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"{port} (timed out; connect_timeout = 2 s)"), lines
    assert check < 30, check
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.slow
def test_a_run_that_never_started_leaves_no_mlflow_run_a_failed_one_stays(tmp_path):
    """mlflow is built, then the next logger's factory fails (a TensorBoard directory inside a file): exit 2, the run
    directory is removed, and the MLflow run is deleted rather than left RUNNING. A run that fails while training,
    even before mlflow logged anything, keeps its run directory and its MLflow run, FAILED."""
    spec = write_spec(tmp_path, loggers='[[loggers]]\nname = "mlflow"\n\n[[loggers]]\nname = "tensorboard"\n'
                                        'subdir = "spec.toml/tb"\n')
    proc = plugtrain("train", spec)
    assert proc.returncode == 2, proc.stderr
    assert "could not be built" in proc.stderr
    assert not (tmp_path / "runs" / "tiny").exists()
    client = client_for(tmp_path / "runs")
    exp = client.get_experiment_by_name("plugtrain")
    from mlflow.entities import ViewType

    (gone,) = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert gone.info.lifecycle_stage == "deleted"

    # the stopper before mlflow: the run fails at the end of epoch 1 before mlflow has logged anything
    failing = write_spec(tmp_path, name="failing", loggers='[[loggers]]\nname = "test-stopper"\nat_epoch = 1\n'
                                                          'how = "raise"\n\n[[loggers]]\nname = "mlflow"\n')
    proc = plugtrain("train", failing, env=child_env([stopper_path(tmp_path / "plugins")]))
    assert proc.returncode not in (0, 2), proc.stderr
    assert "stopped by the test" in proc.stderr
    run_dir = tmp_path / "runs" / "failing"
    run = client.get_run(json.loads((run_dir / "mlflow.json").read_text())["run_id"])
    assert (run.info.status, run.info.lifecycle_stage) == ("FAILED", "active")
    assert run.data.params["run.name"] == "failing"
