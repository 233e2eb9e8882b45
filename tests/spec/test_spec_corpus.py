"""The spec corpus: every malformed spec under ``tests/specs/bad/`` is caught, located and explained; every spec under
``specs/`` and ``tests/specs/good/`` passes.

Each bad spec states what ``plugtrain check`` must say about it in ``# expect:`` lines at its top::

    # expect: 6:8: backbone.name: unknown backbone 'resnet19'. Did you mean 'resnet18' ... plugtrain list backbones
    # expect: parts/base_bad_key.toml:6:1: unknown key 'weight_decai' ...

``LINE:COL`` is where the problem is reported (in the spec itself, or in the file it names, relative to the spec's
folder); the text is one or more fragments of the message, in order, separated by `` ... ``. The problems must be
exactly the expected ones, in that order. The files under ``tests/specs/bad/parts/`` are the files those specs extend.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import attrs
import pytest
from conftest import cli
from helpers_plugins import EXAMPLE_PLUGIN_SRC, REPO, assert_clean_error, make_example_dist, run_plugtrain

from plugtrain.core.registry import reset_registry
from plugtrain.core.runtime import rundir
from plugtrain.core.spec import SpecError, dumps, load_spec, resolve

SPECS = REPO / "tests" / "specs"
BAD = sorted((SPECS / "bad").glob("*.toml"))
GOOD = sorted((SPECS / "good").rglob("*.toml"))
#: The shipped specs as a queue (``plugtrain check``/``train`` order): by name, except that a later stage of a
#: pipeline comes after the stage whose checkpoint it starts from.
STAGE = {"bioencoder-arcface.toml": 1,  # pretrained = stage 1's (bioencoder-supcon's) best.pt
         "finetune-freeze.toml": 1}  # pretrained = the quickstart's best.pt
SHIPPED = sorted((REPO / "specs").glob("*.toml"), key=lambda p: (STAGE.get(p.name, 0), p.name))

_EXPECT = re.compile(r"^# expect: (?:(?P<file>[^:\s]+\.toml):)?(?P<line>\d+):(?P<col>\d+): (?P<text>.+)$")
_PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$", re.S)


@attrs.frozen
class Expect:
    file: Path  # absolute
    line: int
    col: int
    fragments: tuple[str, ...]

    def location(self) -> str:
        """``path:line:col`` as plugtrain prints it for a spec given relative to the repository."""
        return f"{self.file.relative_to(REPO)}:{self.line}:{self.col}"


def expectations(spec: Path) -> list[Expect]:
    out = []
    for line in spec.read_text().splitlines():
        if not line.startswith("# expect:"):
            continue
        m = _EXPECT.match(line)
        assert m, f"{spec.name}: malformed expectation {line!r}"
        file = (spec.parent / m.group("file")).resolve() if m.group("file") else spec.resolve()
        out.append(Expect(file, int(m.group("line")), int(m.group("col")), tuple(m.group("text").split(" ... "))))
    return out


def contains_in_order(message: str, fragments: tuple[str, ...]) -> bool:
    pos = 0
    for frag in fragments:
        found = message.find(frag, pos)
        if found < 0:
            return False
        pos = found + len(frag)
    return True


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(SPECS)) for p in paths]


@pytest.fixture(scope="module")
def example_paths(tmp_path_factory) -> list[Path]:
    """The example plugin installed as pip leaves it (specs/example-plugin.toml uses it): paths for sys.path."""
    return [make_example_dist(tmp_path_factory.mktemp("example")), EXAMPLE_PLUGIN_SRC]


@pytest.fixture(scope="module")
def with_example_plugin(example_paths):
    """The process-wide registry with the example plugin installed (and without it again afterwards)."""
    saved = list(sys.path)
    sys.path[:0] = [str(p) for p in example_paths]
    importlib.invalidate_caches()
    reset_registry()
    try:
        yield example_paths
    finally:
        sys.path[:] = saved
        importlib.invalidate_caches()
        reset_registry()


# -- the corpus itself ---------------------------------------------------------------------------------------------


def test_the_bad_corpus_is_large_and_every_spec_says_what_to_expect():
    assert len(BAD) >= 30
    for spec in BAD:
        assert expectations(spec), f"{spec.name} has no '# expect:' line"
    assert SHIPPED, "specs/ holds no spec"


# -- in-process: exact problems, exact places ----------------------------------------------------------------------


@pytest.mark.parametrize("spec", BAD, ids=_ids(BAD))
def test_bad_spec_reports_exactly_its_problems_where_they_are(spec, monkeypatch):
    monkeypatch.chdir(REPO)
    rel = spec.relative_to(REPO)
    expected = expectations(spec)
    res = resolve(rel)
    assert len(res.problems) == len(expected), "\n".join(res.problems)
    for problem, exp in zip(res.problems, expected, strict=True):
        m = _PROBLEM.match(problem)
        assert m, f"not path:line:col: message: {problem!r}"
        assert (REPO / m.group("file")).resolve() == exp.file, problem
        assert (int(m.group("line")), int(m.group("col"))) == (exp.line, exp.col), problem
        assert contains_in_order(m.group("message"), exp.fragments), f"{exp.fragments} not in {problem!r}"
        assert "\n" not in problem
        _points_at_text(exp, m.group("message"))
    # load_spec (what `train` uses) raises the very same problems, as one message
    with pytest.raises(SpecError) as info:
        load_spec(rel)
    assert info.value.problems == res.problems
    assert info.value.exit_code == 2
    assert str(info.value).splitlines()[1:] == res.problems


def _points_at_text(exp: Expect, message: str) -> None:
    """A located problem points at a key or a value in the file: never at blank space or a comment."""
    if message.startswith(("missing required section", "TOML syntax error")):
        return
    line = exp.file.read_text().splitlines()[exp.line - 1]
    char = line[exp.col - 1 : exp.col]
    assert char and char not in " \t#", f"{exp.location()} points at {char!r} in {line!r}"
    key = re.match(r"unknown (?:key|section) \[?'?([^'\]]+)", message)
    if key:  # an unknown key is pointed at by its key
        assert line[exp.col - 1 :].lstrip("[\"'").startswith(key.group(1)), (line, message)


# -- good specs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SHIPPED + GOOD, ids=[p.name for p in SHIPPED] + _ids(GOOD))
def test_good_spec_loads_and_its_printed_form_round_trips(spec, tmp_path, with_example_plugin, monkeypatch):
    monkeypatch.chdir(REPO)  # shipped specs name their paths relative to the repository
    runs = [resolve(p, validate=False).data["run"] for p in SHIPPED[:SHIPPED.index(spec)]] if spec in SHIPPED else []
    earlier = [rundir.run_dir_for(r.get("output_dir", "runs"), r["name"]) for r in runs]
    with rundir.queued_before(earlier):
        loaded = load_spec(spec)
    assert loaded.source == str(spec)
    printed = dumps(loaded)
    again = tmp_path / "printed.toml"
    again.write_text(printed)
    with rundir.queued_before(earlier):
        reloaded = load_spec(again)
    assert reloaded == loaded
    assert dumps(reloaded) == printed


# -- through the real command line ---------------------------------------------------------------------------------


def test_a_later_stage_checks_in_its_queue_and_is_refused_alone(tmp_path, monkeypatch, capfd):
    """Stage 2 starts from stage 1's best.pt: `check` alone refuses it (training would stop, file:line:col), `check
    STAGE1 STAGE2` accepts it (train runs that queue in that order), the reverse order refuses it again."""
    monkeypatch.chdir(tmp_path)  # no runs/ here: stage 1 has not run
    stage1, stage2 = (str(REPO / "specs" / f"bioencoder-{s}.toml") for s in ("supcon", "arcface"))
    line = next(i for i, t in enumerate(Path(stage2).read_text().splitlines(), 1) if t.startswith("pretrained"))
    for queue, ok in (([stage2], False), ([stage1, stage2], True), ([stage2, stage1], False)):
        capfd.readouterr()
        assert cli("check", *queue) == (0 if ok else 2), queue
        out, err = capfd.readouterr()
        if ok:
            assert out.splitlines() == [f"{p}: OK" for p in queue]
        else:
            assert f"{stage2}:{line}:14: backbone.pretrained: 'runs/bioencoder-supcon/checkpoints/best.pt'" in err
            assert "does not exist" in err and "plugtrain check EARLIER.toml THIS.toml" in err
            assert err.count("\n") == 2, err  # the header and that one problem


def test_check_cli_lists_every_problem_of_every_bad_spec_and_oks_the_good_ones():
    """One `plugtrain check` over the whole corpus: exit 2, an OK line per good spec, every problem located."""
    good = [str(p.relative_to(REPO)) for p in GOOD]
    bad = [str(p.relative_to(REPO)) for p in BAD]
    proc = run_plugtrain("check", *good, *bad)
    err = assert_clean_error(proc)
    assert proc.stdout.splitlines() == [f"{p}: OK" for p in good]
    total = sum(len(expectations(p)) for p in BAD)
    lines = err.splitlines()
    assert lines[0] == f"plugtrain: error: {total} problems in the spec:"
    assert len(lines) == 1 + total
    body = lines[1:]
    for spec in BAD:
        for exp in expectations(spec):
            hits = [x for x in body if x.startswith(exp.location() + ": ")
                    and contains_in_order(x, exp.fragments)]
            assert hits, f"{spec.name}: no {exp.location()}: {' ... '.join(exp.fragments)}\n{err}"


def test_check_cli_oks_every_shipped_and_good_spec(example_paths):
    paths = [str(p.relative_to(REPO)) for p in SHIPPED + GOOD]
    proc = run_plugtrain("check", *paths, paths=example_paths)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: OK" for p in paths]
    # warnings only (some depend on the machine: hub weights not in the cache yet), each located
    assert all(re.match(r"^plugtrain: \S+\.toml:\d+:\d+: warning: ", line) for line in proc.stderr.splitlines()), \
        proc.stderr
