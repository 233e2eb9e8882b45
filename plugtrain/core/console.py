"""Where command output goes: lines, tables and JSON on stdout from rank 0, error lines on stderr from any rank.

A terminal gets rich tables, anything else tab-separated lines (``PLUGTRAIN_PLAIN=1`` forces plain output). Text
goes out through :func:`~plugtrain.core.errors.printable`: control characters that a key, value or path from the
user's files may hold are printed as escapes, never sent to the terminal raw. The training progress bar,
:mod:`plugtrain.core.runtime.progress`, builds on this module (:func:`rank`, :func:`is_tty`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from plugtrain.core.errors import printable


def rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def is_tty() -> bool:
    """True when stdout is a terminal (and plain output was not forced with PLUGTRAIN_PLAIN=1)."""
    if os.environ.get("PLUGTRAIN_PLAIN", "") not in ("", "0"):
        return False
    return sys.stdout.isatty()


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence the standard-library logger ``name`` (below CRITICAL) in the block: a library that logs what it finds
    wrong in a file would print it beside the one message plugtrain gives for it."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def echo(text: str = "") -> None:
    """Print a line on stdout from rank 0 only."""
    if rank() == 0:
        print(printable(text, keep="\n\t"), flush=True)  # tab: predict's columns


def error(text: str) -> None:
    """An error line on stderr, ``plugtrain: error: `` prefixed unless ``text`` already starts with ``plugtrain:``.

    Every rank may have one; off rank 0 the line says which rank."""
    prefix = "plugtrain: error: " if not text.startswith("plugtrain:") else ""
    where = f"[rank {rank()}] " if rank() else ""
    print(f"{where}{prefix}{printable(text)}", file=sys.stderr, flush=True)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, rank 0 only."""
    if rank() == 0:
        print(json.dumps(data, indent=2, default=str), flush=True)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table in a terminal; tab-separated lines with a header otherwise."""
    if rank() != 0:
        return
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*[printable(str(x)) for x in r])
        Console().print(t)
    else:
        print("\t".join(columns))
        for r in rows:
            print("\t".join(_cell(x) for x in r))
        sys.stdout.flush()


def _cell(value: Any) -> str:
    """One plain-table cell: tabs and newlines would break the one-line-per-row format."""
    text = str(value)
    if "\t" in text or "\n" in text or "\r" in text:
        text = " ".join(text.split())
    return printable(text)
