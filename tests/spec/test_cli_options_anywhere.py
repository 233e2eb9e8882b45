"""Options go anywhere on the command line, before, between or after the positionals, for every subcommand, as in
any argparse tool: ``plugtrain list backbones --json 'efficientnet*'`` and ``plugtrain sweep status --json DIR``
used to stop with "unrecognized arguments"."""

from __future__ import annotations

import argparse
import json

import pytest

from plugtrain.entrypoints import cli


def _parser():
    """The command line's parser with the plugins' subcommands (``sweep`` is the built-in sweep plugin's)."""
    return cli._parser(plugins=True)

#: For each subcommand: its positionals, its options (with their values), and a few orders in which to give them.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "list": (["backbones", "efficientnet*"], ["--json"]),
    "show": (["backbones", "resnet18"], ["--json"]),
    "plugins": ([], ["--json"]),
    "check": (["a.toml", "b.toml"], ["--set", "run.epochs=3", "--print", "--set", "run.seed=1"]),
    "schema": ([], []),
    "weights": (["fetch", "a.toml", "b.toml"], ["--set", "backbone.pretrained=true"]),
    "train": (["a.toml", "b.toml"], ["--set", "run.epochs=3", "--resume", "auto", "--overwrite", "--dry-run",
                                     "--folds", "3"]),
    "sweep": (["sweep.toml"], ["--trials", "4", "--storage", "sqlite:///x.db", "--set", "run.epochs=1", "--check"]),
    "submit": (["a.toml"], ["--set", "run.epochs=3", "--time", "1:00:00", "--nodes", "2", "--gpus-per-node", "4",
                            "--partition", "gpu", "--signal", "USR1@120", "--dry-run"]),
    "evaluate": (["runs/x"], ["--checkpoint", "last", "--weights", "ema", "--split", "test", "--json"]),
    "predict": (["runs/x", "a.png", "b.png"], ["--checkpoint", "last", "--weights", "model", "--top-k", "3",
                                                "--json"]),
    "export": (["runs/x"], ["--checkpoint", "best", "--format", "pt2", "--weights", "model", "--output", "m.pt2",
                            "--tolerance", "0.01", "--json"]),
    "shards": (["data.csv"], ["--out", "shards", "--shard-size", "10", "--set", "data.image_size=8",
                              "--val-fraction", "0.1", "--seed", "3", "--overwrite"]),
    "lr-find": (["a.toml"], ["--set", "run.epochs=3", "--out", "lf", "--overwrite", "--steps", "50", "--min-lr",
                             "1e-6", "--max-lr", "1", "--json", "--set", "run.seed=2"]),
}


def _option_groups(options: list[str]) -> list[list[str]]:
    """``["--set", "a=1", "--json"]`` -> ``[["--set", "a=1"], ["--json"]]``."""
    groups: list[list[str]] = []
    for word in options:
        if word.startswith("--"):
            groups.append([word])
        else:
            groups[-1].append(word)
    return groups


def _orders(positionals: list[str], options: list[str]) -> list[list[str]]:
    """Options after, before, and interleaved between the positionals (each group kept together)."""
    groups = _option_groups(options)
    flat = [w for g in groups for w in g]
    orders = [positionals + flat, flat + positionals]
    mixed: list[str] = []
    for i in range(max(len(positionals), len(groups))):
        if i < len(groups):
            mixed += groups[i]
        if i < len(positionals):
            mixed.append(positionals[i])
    orders.append(mixed)
    woven: list[str] = []  # positional first, then an option group, and so on
    for i in range(max(len(positionals), len(groups))):
        if i < len(positionals):
            woven.append(positionals[i])
        if i < len(groups):
            woven += groups[i]
    orders.append(woven)
    return orders


def test_every_subcommand_is_covered():
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(CASES)


@pytest.mark.parametrize("command", sorted(CASES))
def test_options_before_between_and_after_positionals_parse_alike(command):
    positionals, options = CASES[command]
    parsed = [vars(_parser().parse_args([command, *order])) for order in _orders(positionals, options)]
    assert all(p == parsed[0] for p in parsed), parsed
    if command == "list":
        assert parsed[0]["kind"] == "backbones" and parsed[0]["pattern"] == "efficientnet*" and parsed[0]["json"]
    if command in ("check", "train", "weights"):
        assert parsed[0]["specs"] == ["a.toml", "b.toml"]
        assert parsed[0]["overrides"] == [w for g in _option_groups(options) if g[0] == "--set" for w in g[1:]]
    if command == "predict":
        assert parsed[0]["run_dir"] == "runs/x" and parsed[0]["images"] == ["a.png", "b.png"]


def test_sweep_status_takes_its_options_anywhere():
    for order in (["status", "DIR", "--json", "--storage", "sqlite:///s.db"],
                  ["status", "--json", "DIR", "--storage", "sqlite:///s.db"],
                  ["--json", "--storage", "sqlite:///s.db", "status", "DIR"]):
        ns = _parser().parse_args(["sweep", *order])
        assert (ns.target, ns.json, ns.storage) == (["status", "DIR"], True, "sqlite:///s.db")


def test_an_unknown_option_is_still_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["list", "backbones", "--bogus", "x*"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_list_with_json_before_the_pattern_through_the_cli(cli_run):
    proc = cli_run("list", "backbones", "--json", "efficientnet*")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all(r["name"].startswith("efficientnet") for r in rows)


def test_sweep_status_with_json_before_the_dir_through_the_cli(cli_run, tmp_path):
    proc = cli_run("sweep", "status", "--json", tmp_path / "nothing-here")
    assert proc.returncode == 2
    assert "unrecognized arguments" not in proc.stderr
    assert "not a sweep directory" in proc.stderr
