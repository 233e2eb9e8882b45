"""User-facing errors: one readable message, exit code 2, no traceback."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class PlugtrainError(Exception):
    """An error in the user's input (spec, CLI, plugin, data) rather than a bug in plugtrain.

    The CLI prints ``str(error)`` on stderr and exits with :attr:`exit_code` (2), without a traceback unless
    ``PLUGTRAIN_DEBUG=1``.
    """

    exit_code = 2

    def __str__(self) -> str:
        return printable(super().__str__())


class TrainingFailed(PlugtrainError):
    """Training stopped for a reason found while running (a NaN loss, say): exit code 1."""

    exit_code = 1


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """``" Did you mean 'x' or 'y'?"`` for the closest candidates (case-insensitive), or ``""``."""
    candidates = list(candidates)
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.6)
    if not close:
        return ""
    names = [repr(by_lower[c]) for c in close]
    return " Did you mean " + (" or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]) + "?"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(exc)`` (at most ``limit`` characters), or ``""``: what a one-line message
    quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


#: What a terminal would act on instead of showing: C0 and C1 control characters (ESC starts colour and cursor
#: sequences, CR overwrites the line, NUL, BEL, ...), DEL, and the Unicode line separators and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str, keep: str = "\n") -> str:
    """``text`` safe to print on a terminal: control characters written as escapes (``\\x1b``, ``\\r``, ``\\x00``,
    ``\\u202e``), as Python's ``repr`` writes them, so that a key, value or path from the user's files shows what
    it holds instead of moving the cursor, recolouring the terminal or hiding text. The characters in ``keep`` stay:
    by default the newlines of a message of several lines; ``""`` for a message that is one line by design."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        if c in keep:
            return c
        return _ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(escape, text)
