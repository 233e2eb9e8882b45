"""One debug switch (issue 22): :func:`plugtrain.core.errors.debug` is the only reader of ``PLUGTRAIN_DEBUG``; every
command, the sweep and the CLI ask it instead of reading the environment themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from plugtrain.core import errors

PACKAGE = Path(__file__).resolve().parents[2] / "plugtrain"


@pytest.mark.parametrize("value,on", [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)])
def test_debug_is_on_for_any_value_but_empty_or_zero(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert errors.debug() is on


def test_no_module_but_errors_reads_the_variable():
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Constant) and n.value == errors.DEBUG_ENV for n in ast.walk(tree)):
            readers.add(path.relative_to(PACKAGE).as_posix())
    assert readers == {"core/errors.py"}, sorted(readers)
