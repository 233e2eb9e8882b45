"""Plugins add CLI subcommands through the ``plugtrain_commands`` hook (as datasette's ``register_commands``).

Each plugin here is a real distribution written to a temp dir (``helpers_plugins.make_dist``) and found through its
entry point by a real ``plugtrain`` child process.
"""

from __future__ import annotations

from helpers_plugins import assert_clean_error, make_dist, run_plugtrain

HELLO = """
    from pathlib import Path

    from plugtrain import Command, PlugtrainError, hookimpl

    def add_arguments(parser):
        parser.add_argument("who", metavar="WHO")
        parser.add_argument("--shout", action="store_true", help="say it loudly")
        parser.add_argument("--marker", metavar="FILE")

    def hello(args):
        if args.who == "nobody":
            raise PlugtrainError("hello: nobody to greet")
        text = f"hello, {args.who}"
        print(text.upper() if args.shout else text)
        return 3 if args.who == "three" else None

    @hookimpl
    def plugtrain_commands():
        import os
        if os.environ.get("HELLO_MARKER"):  # records that the hook was called
            Path(os.environ["HELLO_MARKER"]).write_text("called")
        return [Command("hello", hello, help="greet someone (example)", arguments=add_arguments)]
"""

CLASH = """
    from plugtrain import Command, hookimpl

    @hookimpl
    def plugtrain_commands():
        return [Command("train", lambda args: print("not the real train"), help="a clash"),
                Command("hello", lambda args: print("the second hello"), help="a second hello"),
                Command("bye", lambda args: print("bye"), help="say bye")]
"""


def _hello(tmp_path):
    return make_dist(tmp_path / "hello", "hello-dist", {"hello": "pt_hello"}, {"pt_hello": HELLO})


def _clash(tmp_path):
    return make_dist(tmp_path / "clash", "zclash-dist", {"zclash": "pt_zclash"}, {"pt_zclash": CLASH})


def test_help_lists_a_plugin_command_after_the_built_ins(tmp_path):
    proc = run_plugtrain("--help", paths=[_hello(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    assert "greet someone (example) (plugin 'hello')" in proc.stdout
    assert proc.stdout.index("shards") < proc.stdout.index("hello")
    assert proc.stderr == ""


def test_a_plugin_command_runs_with_its_own_arguments(tmp_path):
    root = _hello(tmp_path)
    proc = run_plugtrain("hello", "--shout", "Ada", paths=[root])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "HELLO, ADA\n", "")
    assert run_plugtrain("hello", "three", paths=[root]).returncode == 3
    proc = run_plugtrain("hello", "--help", paths=[root])
    assert proc.returncode == 0 and "--shout" in proc.stdout and "say it loudly" in proc.stdout
    assert_clean_error(run_plugtrain("hello", "nobody", paths=[root]), "plugtrain: error: hello: nobody to greet")
    proc = run_plugtrain("hello", paths=[root])  # a usage error of the plugin's parser: argparse's, exit 2
    assert proc.returncode == 2 and "the following arguments are required: WHO" in proc.stderr


def test_built_in_commands_never_call_the_hook(tmp_path):
    root, marker = _hello(tmp_path), tmp_path / "called"
    proc = run_plugtrain("plugins", paths=[root], HELLO_MARKER=str(marker))
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("hello"))
    assert "commands" in line  # the hook is listed among the plugin's hooks
    assert run_plugtrain("--version", paths=[root], HELLO_MARKER=str(marker)).returncode == 0
    assert not marker.exists()
    assert run_plugtrain("hello", "Ada", paths=[root], HELLO_MARKER=str(marker)).returncode == 0
    assert marker.read_text() == "called"


def test_a_plugin_command_clashing_with_a_built_in_or_an_earlier_plugin_is_refused(tmp_path):
    paths = [_hello(tmp_path), _clash(tmp_path)]
    proc = run_plugtrain("--help", paths=paths)
    assert proc.returncode == 0, proc.stderr
    assert ("plugtrain: warning: plugin 'zclash' (zclash-dist==1.0) adds the command 'train', which is a built-in "
            "command; the plugin's is ignored") in proc.stderr
    assert ("plugin 'zclash' (zclash-dist==1.0) adds the command 'hello', which plugin 'hello' (hello-dist==1.0) "
            "already adds; the plugin's is ignored") in proc.stderr
    assert "a clash" not in proc.stdout and "say bye (plugin 'zclash')" in proc.stdout
    proc = run_plugtrain("hello", "Ada", paths=paths)
    assert proc.stdout == "hello, Ada\n"  # the first plugin's (by entry-point name) is kept
    proc = run_plugtrain("bye", paths=paths)
    assert proc.returncode == 0 and proc.stdout == "bye\n"
    assert_clean_error(run_plugtrain("bye", paths=paths, PLUGTRAIN_STRICT_PLUGINS="1"),
                       "adds the command 'train', which is a built-in command", "PLUGTRAIN_STRICT_PLUGINS is set")


def test_a_broken_commands_hook_is_reported_and_the_rest_works(tmp_path):
    bad = make_dist(tmp_path / "bad", "badcmd-dist", {"badcmd": "pt_badcmd"}, {"pt_badcmd": """
        from plugtrain import Command, hookimpl

        @hookimpl
        def plugtrain_commands():
            return [Command("Bad Name", print)]
    """})
    proc = run_plugtrain("hello", "Ada", paths=[_hello(tmp_path), bad])
    assert proc.returncode == 0 and proc.stdout == "hello, Ada\n"
    assert "plugin 'badcmd' (badcmd-dist==1.0) failed in plugtrain_commands: TypeError: plugtrain_commands returned " \
           "a Command named 'Bad Name'" in proc.stderr


def test_the_sweep_command_is_a_built_in_plugins_and_help_lists_it():
    """``plugtrain sweep`` comes through the same hook as a third party's command; the command line names no sweep."""
    from helpers_plugins import REPO

    proc = run_plugtrain("--help")
    assert proc.returncode == 0, proc.stderr
    assert "(plugin 'sweep')" in proc.stdout and proc.stdout.index("shards") < proc.stdout.index("sweep")
    assert '"sweep"' not in (REPO / "plugtrain" / "entrypoints" / "cli.py").read_text()
    proc = run_plugtrain("sweep", "status")
    assert proc.returncode == 2 and "plugtrain: error: plugtrain sweep status: give one SWEEP_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr
