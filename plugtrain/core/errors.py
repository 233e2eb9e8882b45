"""User-facing errors: one readable message, exit code 2, no traceback."""

from __future__ import annotations

import difflib
import os
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


#: The environment variable that asks for tracebacks (and chattier libraries) behind error messages.
DEBUG_ENV = "PLUGTRAIN_DEBUG"


def debug() -> bool:
    """Whether ``PLUGTRAIN_DEBUG`` is set (to anything but empty or ``0``): print the traceback behind an error message.
    The one switch every command, the CLI and the sweep read, at the moment they need it."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class TrainingFailed(PlugtrainError):
    """Training stopped for a reason found while running (a NaN loss, say): exit code 1."""

    exit_code = 1


class DataFault(PlugtrainError):
    """A sample of ``split`` that could not be read (``data.on_error = "raise"``): bad input, exit code 2, naming
    ``file`` and why. ``then`` says what the run left and how to go on, when the fault stopped a training run."""

    def __init__(self, file: str, reason: str, split: str, then: str = "") -> None:
        self.file, self.reason, self.split, self.then = file, reason, split, then
        text = f"{file}: {reason} ({split} split; set data.on_error = \"skip\" to skip such samples)"
        super().__init__(f"{text}. {then}" if then else text)

    def __reduce__(self) -> tuple:  # picklable (a multiprocessing queue, a worker's result) with its fields
        return type(self), (self.file, self.reason, self.split, self.then)


class NumericalFault(TrainingFailed):
    """A non-finite loss, validation loss or model found at optimizer ``step``: exit code 1; ``checkpoint`` is the
    last good ``last.pt`` kept (``None`` when none was written yet)."""

    def __init__(self, message: str, step: int, checkpoint: object = None) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(message)

    def __reduce__(self) -> tuple:
        return type(self), (self.args[0], self.step, self.checkpoint)


class Stopped(Exception):  # noqa: N818 - what happened, as the CLI reports it
    """A run stopped by signal ``signum`` at optimizer ``step``: ``checkpoint`` is the ``last.pt`` that ``--resume
    auto`` continues from (``None`` when none was written). ``at_once``: a second Ctrl-C stopped it between
    checkpoints (the steps after ``checkpoint`` are redone); otherwise ``checkpoint`` holds ``step`` exactly.
    Exit code 128 + ``signum``."""

    def __init__(self, signum: int, checkpoint: object, step: int, at_once: bool = False) -> None:
        self.signum, self.checkpoint, self.step, self.at_once = int(signum), checkpoint, step, at_once
        super().__init__(f"signal {signum} at step {step}")

    def __reduce__(self) -> tuple:
        return type(self), (self.signum, self.checkpoint, self.step, self.at_once)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
