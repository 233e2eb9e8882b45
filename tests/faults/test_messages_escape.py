"""Issue 21, item 7: a message names what caused it, and shows the user's text as it is without letting it act on the
terminal.

* Keys, section names, values and paths holding control characters (ESC colour and screen sequences, CR, NUL, BEL,
  a bidi override, and newlines inside a key) reach the terminal as escapes; the only raw newlines are those between
  the lines of a message.
* A problem brought about by a ``--set`` that changed something *inside* a value of the file (``loggers[0]=1``) points
  at the override, not at the file's line.
* A dict spec or ``set=`` value holding ``None`` names the dotted key path and says to leave the key out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import tiny_spec

import plugtrain
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.spec import SpecError, resolve

#: Raw characters a terminal acts on: C0 controls but the newline, DEL, C1 controls, line separators, bidi controls.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")

#: TOML (escapes as TOML writes them) holding control characters in a section name, keys and values.
WEIRD = r"""
["sec\u001b[31m\r\nX"]
a = 1

[trainer."esc\u001b[2J\u001b[H"]
x = 1

[[loggers]]
name = "csv\u0007\u202e"

[[loggers]]
name = "csv"
"nul\u0000key" = 1
"new\nline" = 2
"cr\roverwrite" = 3
"""


def assert_terminal_safe(text: str) -> None:
    raw = sorted({repr(c) for c in RAW.findall(text)})
    assert not raw, f"raw control characters {raw} in {text!r}"


def weird_spec(tmp_path: Path) -> Path:
    spec = tiny_spec(tmp_path, "weird")
    spec.write_text(spec.read_text() + WEIRD, encoding="utf-8")
    return spec


def test_printable_escapes_control_characters_and_keeps_message_newlines():
    from plugtrain.core.errors import printable

    assert printable("a\x1b[31m\rb\x00\x07\u202e\x9b\x7f") == r"a\x1b[31m\rb\x00\x07\u202e\x9b\x7f"
    assert printable("line one\nline two\tend") == "line one\nline two\\tend"
    assert printable("key 'a\nb'", keep="") == r"key 'a\nb'"
    assert printable(printable("a\x1b\n", keep=""), keep="") == printable("a\x1b\n", keep="")  # idempotent
    assert printable("plain text: déjà vu, 東京") == "plain text: déjà vu, 東京"


def test_check_prints_keys_and_values_with_control_characters_as_escapes(tmp_path, cli_run):
    spec = weird_spec(tmp_path)
    proc = cli_run("check", spec, "--set", 'run."set\x1b[5m"=1', "--set", "run.name=\"bell\x07\"")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_terminal_safe(proc.stdout + proc.stderr)
    lines = proc.stderr.splitlines()
    n = int(re.match(r"plugtrain: error: (\d+) problems? in the spec:", lines[0]).group(1))
    assert len(lines) == n + 1, proc.stderr  # one line a problem: a newline inside a key does not split one
    err = proc.stderr
    for shown in (r"[sec\x1b[31m\r\nX]", r"esc\x1b[2J\x1b[H", r"'csv\x07\u202e'", r"nul\x00key", r"new\nline",
                  r"cr\roverwrite", r'--set run."set\x1b[5m"=1', r"bell\x07"):
        assert shown in err, (shown, err)


def test_train_and_the_api_escape_them_too(tmp_path, cli_run):
    spec = weird_spec(tmp_path)
    proc = cli_run("train", spec)
    assert proc.returncode == 2 and r"[sec\x1b[31m\r\nX]" in proc.stderr, proc.stderr
    assert_terminal_safe(proc.stdout + proc.stderr)
    with pytest.raises(SpecError) as info:
        plugtrain.check(spec)
    assert_terminal_safe(str(info.value))
    assert all("\n" not in p for p in info.value.problems)
    with pytest.raises(SpecError) as info:  # a dict spec: keys written by Python, not TOML
        plugtrain.check({"run": {"name": "x", "k\x1b[31m\r\n": 1}})
    assert r"'k\x1b[31m\r\n'" in str(info.value) and "<spec dict>" in str(info.value)
    assert_terminal_safe(str(info.value))


def test_messages_that_quote_paths_and_arguments_escape_them(tmp_path, cli_run):
    run_dir = tmp_path / "run\x1b[31m\rX"
    proc = cli_run("evaluate", run_dir)  # a PlugtrainError that quotes a path
    assert proc.returncode == 2 and r"run\x1b[31m\rX" in proc.stderr, proc.stderr
    assert_terminal_safe(proc.stderr)
    proc = cli_run("list", "--bogus\x1b[2J")  # argparse's own usage error
    assert proc.returncode == 2 and r"--bogus\x1b[2J" in proc.stderr, proc.stderr
    assert_terminal_safe(proc.stderr)
    assert_terminal_safe(str(PlugtrainError("a value 'x\x1b[31m\ry'")))


def test_a_quoted_override_key_that_is_not_a_toml_string_is_one_message(tmp_path, cli_run):
    spec = tiny_spec(tmp_path)
    for key in ('run."k\x1b"', r'run."a\q"'):
        proc = cli_run("check", spec, "--set", f"{key}=1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{spec}: --set " in proc.stderr and "is not a TOML string" in proc.stderr, proc.stderr
        assert_terminal_safe(proc.stderr)


# -- an override that changed a value inside the file's -------------------------------------------------------------
@pytest.mark.parametrize("override, message, written", [
    ("loggers[0]=1", "loggers must be an array of tables", "loggers"),
    ("augmentations.train[0]=1", "augmentations.train must be an array of tables", "augmentations.train"),
])
def test_a_problem_an_override_made_inside_a_file_s_value_points_at_the_override(tmp_path, override, message,
                                                                                   written):
    spec = tiny_spec(tmp_path, extra='[[loggers]]\nname = "csv"\n')
    lines = spec.read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if t.startswith(("[[loggers]]", "train =")[written != "loggers"]))
    problems = resolve(spec, [override]).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{spec}: --set {override}: {message}"), problems[0]
    assert problems[0].endswith(f"({written} at {spec}:{line}:1)"), problems[0]


def test_a_problem_of_the_file_alone_still_points_at_the_file_line(tmp_path):
    spec = tiny_spec(tmp_path)
    spec.write_text(spec.read_text().replace('name = "test_efficientnet"\n', ""))  # [backbone] without a name
    line = spec.read_text().splitlines().index("[backbone]") + 1
    problems = resolve(spec, ["backbone.in_chans=3"]).problems  # an override inside that table is not the cause
    assert len(problems) == 1 and problems[0].startswith(f"{spec}:{line}:1: [backbone] is missing 'name'"), problems


# -- None in a dict spec or a set= value ----------------------------------------------------------------------------
def test_none_in_a_dict_spec_names_its_dotted_key(tmp_path):
    spec = {"run": {"name": "x", "seed": None}, "data": {"dataset": "sklearn-digits", "class_subset": [1, None]},
            "trainer": {"extra": {"k": None}}}
    with pytest.raises(SpecError) as info:
        plugtrain.check(spec)
    message = str(info.value)
    assert "not TOML serializable" not in message
    assert "<spec dict>: run.seed is None, which has no TOML form" in message and "omit the key" in message
    assert "<spec dict>: data.class_subset[1] is None" in message and "remove the item" in message
    assert "<spec dict>: trainer.extra.k is None" in message
    with pytest.raises(SpecError, match=r"<spec dict>: run\.when is a set, which has no TOML form"):
        plugtrain.check({"run": {"when": {1, 2}}})


def test_none_inside_a_set_value_names_its_dotted_key(tmp_path):
    spec = tiny_spec(tmp_path)
    with pytest.raises(PlugtrainError, match=r"trainer\.extra\.k is None, which has no TOML form .*omit the key"):
        plugtrain.check(spec, set={"trainer.extra": {"k": None}})
    with pytest.raises(PlugtrainError, match=r"run\.seed is None"):
        plugtrain.check(spec, set={"run.seed": None})
