"""plugtrain-wandb against real wandb in offline mode: tiny real training runs, read back with wandb's own reader.

The runs train timm's ``test_efficientnet`` on scikit-learn's digits at 16x16 for a few steps. W&B writes each run
attempt to a transaction log ``<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``; the tests read it back with
``wandb leet inspect --json`` (wandb's own reader of that file, in its ``wandb-core`` binary: one JSON object per
record: run, config, history rows with their step, exit). Nothing is mocked and nothing leaves this machine: the
"unreachable server" is a closed port on 127.0.0.1. wandb's config/cache/data folders are put under each test's
temporary directory.

No conftest.py here (the core suite's ``tests/conftest.py`` is imported by name, so a second ``conftest`` module
would shadow it when both suites run in one pytest session): the spec, the stopper plugin and the child environment
come from the core suite's ``tests/helpers_trackers.py``, shared with plugtrain-mlflow's tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))  # the core suite's helpers, run alone too
import conftest  # noqa: E402
import helpers_trackers as trackers  # noqa: E402
from conftest import cli, free_port  # noqa: E402
from helpers_faults import torchrun_cmd  # noqa: E402
from helpers_trackers import csv_rows, plugtrain, stopper_path  # noqa: E402

pytestmark = pytest.mark.timeout(300)
one_torch_thread = conftest.one_torch_thread  # the core suite's fixture, for this module's tests

WANDB_OFFLINE = '[[loggers]]\nname = "wandb"\nmode = "offline"\n'


def write_spec(folder: Path, name: str = "tiny", epochs: int = 2, loggers: str = WANDB_OFFLINE) -> Path:
    return trackers.write_spec(folder, loggers, name, epochs)


def wandb_env(home: Path) -> dict[str, str]:
    """wandb variables for a hermetic test: its folders under ``home``, no key, no server, no inherited mode."""
    return {"WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts")}


def child_env(home: Path, paths: list[Path] = (), **extra: str) -> dict[str, str]:
    """One thread, plain output, no torchrun/plugtrain/W&B variables inherited from the caller; W&B's folders under
    ``home``."""
    return trackers.tracker_env("WANDB_", paths, **wandb_env(home), **extra)


@pytest.fixture
def wandb_home(tmp_path, monkeypatch) -> Path:
    """This process's wandb settings for a test: no inherited W&B variables, folders under tmp_path."""
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    for key, value in wandb_env(tmp_path / "wandb-home").items():
        monkeypatch.setenv(key, value)
    return tmp_path / "wandb-home"


def inspect(run_file: Path) -> list[dict[str, Any]]:
    """Every record of a ``.wandb`` transaction log, read by wandb itself (``wandb leet inspect --json``)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_file)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def attempts(run_dir: Path) -> list[Path]:
    """The transaction logs of a run directory, one per process that ran it (oldest first)."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)


def history(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(int(r["history"]["step"]["num"]), r["history"]["item"]) for r in records if r["type"] == "history"]


def wandb_core_of(pid: int) -> list[int]:
    """The wandb-core service processes started for process ``pid`` (``wandb-core ... --pid <pid>``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and args and args[0].endswith(b"wandb-core") and b"--pid" in args \
                and args[args.index(b"--pid") + 1:][:1] == [str(pid).encode()]:
            found.append(int(proc.name))
    return found


def wait_gone(pid: int, seconds: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := wandb_core_of(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# -- the registry: listed, shown, in the schema; wandb not imported to list --------------------------------------------


def test_listed_with_its_distribution_without_importing_wandb(tmp_path):
    trackers.assert_listed_without_importing("wandb", child_env(tmp_path))


def test_show_and_schema(capsys):
    assert cli("show", "loggers", "wandb", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in shown["params"]}
    assert set(params) == {"mode", "project", "entity", "run_name", "group", "tags", "notes"}
    assert params["mode"]["default"] == "online"
    assert "wandb.json" in shown["doc"]
    assert cli("schema") == 0
    loggers = json.loads(capsys.readouterr().out)["definitions"]["loggers"]
    assert "wandb" in loggers["properties"]["name"]["enum"]
    (branch,) = [b["then"] for b in loggers["allOf"] if b["if"]["properties"]["name"]["enum"] == ["wandb"]]
    assert branch["properties"]["mode"]["enum"] == ["online", "offline", "disabled"]
    assert branch["properties"]["tags"]["items"] == {"type": "string"}


def test_check_rejects_a_bad_mode(tmp_path, capsys):
    spec = write_spec(tmp_path, loggers='[[loggers]]\nname = "wandb"\nmode = "offlne"\n')
    assert cli("check", spec) == 2
    assert "offlne" in capsys.readouterr().err


# -- a run, read back ----------------------------------------------------------------------------------------------------


def test_offline_run_config_history_images_then_resume_after_completion(tmp_path, wandb_home, one_torch_thread, capfd):
    spec = write_spec(tmp_path, loggers=WANDB_OFFLINE + 'project = "digits"\ntags = ["tiny", "test"]\n'
                                                       'group = "g1"\n\n[[metrics]]\nname = "embeddings"\n')
    spec.write_text(spec.read_text().replace("[augmentations]\n", "[augmentations]\nsave_samples = 4\n"))
    assert cli("train", spec) == 0
    assert "wandb" not in capfd.readouterr().err  # WANDB_SILENT: no banners, no sync hints
    assert wandb_core_of(os.getpid()) == []  # close() finished the run and stopped the service process
    run_dir = tmp_path / "runs" / "tiny"
    state = json.loads((run_dir / "wandb.json").read_text())
    (first,) = attempts(run_dir)
    assert first.name == f"run-{state['run_id']}.wandb"
    records = inspect(first)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == state["run_id"] and run["project"] == "digits" and run["display_name"] == "tiny"
    assert run["tags"] == ["tiny", "test"] and run["run_group"] == "g1"
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    resolved = tomllib.loads((run_dir / "spec.toml").read_text())
    assert config == json.loads(json.dumps(resolved))  # the resolved spec, whole
    rows = history(records)
    assert [s for s, _ in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert rows[0][1]["samples/train._type"] == "image-file"  # the augmented samples, logged before training
    # the per-step metrics (log_every_steps = 1): every optimizer step, at its global step
    per_step = [(s, item) for s, item in rows if "step/loss" in item]
    assert [s for s, _ in per_step] == [1, 2, 3, 4, 5, 6]
    for _, item in per_step:
        assert item["step/loss"] > 0 and item["step/lr"] > 0 and item["step/throughput"] > 0
        assert "step/grad_norm" in item
    assert per_step[-1][1]["step/lr"] == pytest.approx(float(csv_rows(run_dir)[-1]["train/lr"]), rel=1e-6)
    epochs = [(s, item) for s, item in rows if "epoch" in item]
    for (step, item), row in zip(epochs, csv_rows(run_dir), strict=True):
        assert int(row["step"]) == step
        for key in ("train/loss", "train/lr", "val/loss", "val/accuracy", "epoch"):
            assert item[key] == pytest.approx(float(row[key]), rel=1e-6), key
        prefix = "val/confusion_matrix."  # leet prints a nested value's fields as dotted keys
        image = {k[len(prefix):]: v for k, v in item.items() if k.startswith(prefix)}
        assert image["_type"] == "image-file"
        assert (first.parent / "files" / image["path"]).is_file()
        assert item["val/embeddings._type"] == "table-file" and item["val/embeddings.nrows"] > 0
    (exit_,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_.get("exit_code", 0) == 0

    # --resume auto of the completed run, one epoch more: the same W&B run id, a new attempt that starts at step 9
    assert cli("train", spec, "--resume", "auto", "--set", "run.epochs=3") == 0
    assert wandb_core_of(os.getpid()) == []
    assert json.loads((run_dir / "wandb.json").read_text())["run_id"] == state["run_id"]
    first_again, second = attempts(run_dir)
    assert first_again == first and second.name == first.name  # same run id, a second transaction log
    records = inspect(second)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == state["run_id"] and run.get("resume") is True
    assert run["config"]["update"]["run"]["epochs"] == 3
    assert [s for s, _ in history(records)] == [7, 8, 9]
    assert [s for s, item in history(records) if "epoch" in item] == [9]


@pytest.mark.slow
def test_crash_and_kill_then_resume_keep_one_run_without_duplicated_steps(tmp_path):
    """Attempt 1 logs epochs 1-2 and then fails before epoch 2's last.pt (the runtime closes the logger: W&B writes
    everything). Attempt 2 (--resume auto) replays epoch 2 from epoch 1's checkpoint, must not log step 6 again,
    logs epoch 3 and is SIGKILLed a second later (W&B flushes its transaction log every 0.2 s here, so a step-6 row
    would be in the file; the open step-9 row is lost). Attempt 3 replays epoch 3. Across the three transaction logs
    of the one run id every step is there exactly once, and no wandb-core process is left over."""
    spec = write_spec(tmp_path, epochs=3, loggers=WANDB_OFFLINE + textwrap.dedent('''
        [[loggers]]
        name = "test-stopper"
        at_epoch = 2
        how = "raise"

        [[loggers]]
        name = "test-stopper"
        at_epoch = 3
        how = "kill"
        sleep = 1.0
        '''))
    env = child_env(tmp_path / "wandb-home", [stopper_path(tmp_path / "plugins")],
                    WANDB__TRANSACTION_LOG_FLUSH_INTERVAL="0.2")
    run_dir = tmp_path / "runs" / "tiny"

    crashed = plugtrain("train", spec, env=env)
    assert crashed.returncode not in (0, 2, -signal.SIGKILL), crashed.stderr
    assert "stopped by the test" in crashed.stderr
    killed = plugtrain("train", spec, "--resume", "auto", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "epoch 2, batch 0" in killed.stdout  # epoch 2 was replayed from epoch 1's checkpoint
    killed_pid = int((run_dir / "stopped-kill-3").read_text())
    assert wait_gone(killed_pid) == [], "wandb-core outlived the killed process"
    done = plugtrain("train", spec, "--resume", "auto", env=env)
    assert done.returncode == 0, done.stderr
    assert "epoch 3, batch 0" in done.stdout

    run_id = json.loads((run_dir / "wandb.json").read_text())["run_id"]
    logs = attempts(run_dir)
    assert len(logs) == 3 and all(p.name == f"run-{run_id}.wandb" for p in logs)
    steps = [[s for s, _ in history(inspect(p))] for p in logs]
    epochs = [[s for s, item in history(inspect(p)) if "epoch" in item] for p in logs]
    assert steps[0] == [1, 2, 3, 4, 5, 6] and epochs[0] == [3, 6]  # finished by close(): everything written
    assert [r["type"] for r in inspect(logs[1])].count("run") == 1  # attempt 2's log was flushed before the kill ...
    assert not {4, 5, 6} & set(steps[1])  # ... and has no step 4-6: the replayed steps were not logged again
    assert epochs[2] == [9] and steps[2][-1] == 9
    flat = [s for attempt in steps for s in attempt]  # per-step rows (log_every_steps = 1) and epoch rows
    assert sorted(flat) == sorted(set(flat)) == list(range(1, 10))
    exits = [[r["exit"].get("exit_code", 0) for r in inspect(p) if r["type"] == "exit"] for p in logs]
    assert exits[0] == [1] and exits[2] == [0]


@pytest.mark.slow
def test_torchrun_two_processes_make_one_wandb_run(tmp_path):
    spec = write_spec(tmp_path, loggers=WANDB_OFFLINE)
    env = child_env(tmp_path / "wandb-home")
    proc = subprocess.run(torchrun_cmd("train", spec), capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "env.json").read_text())["world_size"] == 2
    (only,) = attempts(run_dir)  # rank 0 alone built the logger
    assert only.name == f"run-{json.loads((run_dir / 'wandb.json').read_text())['run_id']}.wandb"
    assert [s for s, item in history(inspect(only)) if "epoch" in item] == [3, 6]
    assert [s for s, _ in history(inspect(only))] == [1, 2, 3, 4, 5, 6]  # log_every_steps = 1


# -- failures before training ---------------------------------------------------------------------------------------------


def test_online_without_a_reachable_server_exits_2_with_one_message_and_no_run_dir(tmp_path, wandb_home, one_torch_thread,
                                                                                   capfd, monkeypatch):
    spec = write_spec(tmp_path, loggers='[[loggers]]\nname = "wandb"\n')  # mode "online", the default
    # not logged in: refused at once
    assert cli("train", spec) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "wandb" in lines[0] and "could not start a W&B run" in lines[0], lines
    assert not (tmp_path / "runs" / "tiny").exists()
    # a key, but the server is a closed port: refused after WANDB_INIT_TIMEOUT
    port = free_port()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    t0 = time.monotonic()
    assert cli("train", spec) == 2
    elapsed = time.monotonic() - t0
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
    assert not (tmp_path / "runs" / "tiny").exists()
    assert elapsed < 60, elapsed
    assert wandb_core_of(os.getpid()) == []


def test_disabled_mode_writes_nothing(tmp_path, wandb_home, one_torch_thread):
    spec = write_spec(tmp_path, loggers='[[loggers]]\nname = "wandb"\nmode = "disabled"\n')
    assert cli("train", spec) == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "metrics.csv").is_file()
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb.json").exists()
