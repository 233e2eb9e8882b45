"""User-facing errors: one readable message, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlugtrainError(Exception):
    """An error in the user's input (spec, CLI, plugin, data) rather than a bug in plugtrain.

    The CLI prints ``str(error)`` on stderr and exits with :attr:`exit_code` (2), without a traceback unless
    ``PLUGTRAIN_DEBUG=1``.
    """

    exit_code = 2


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
