"""Where each key and value of a TOML document sits: a light pass over the source (tomllib gives no positions).

:func:`locate` maps every key path of a *valid* TOML document to the line and column of its key and of its value::

    locate(src)[("augmentations", "train", 1, "transforms", 0, "size")]
    # Pos(line=7, col=9, value_line=7, value_col=16)

Paths are tuples of table keys (str) and array indexes (int): arrays of tables (``[[loggers]]``), arrays of inline
tables and inline tables nested at any depth are all addressed the same way. A table header ``[data]`` gives the path
``("data",)`` the position of the header; an element of an array of tables ``[[loggers]]`` gives
``("loggers", 0)`` the position of its header. Lines and columns are 1-based; columns count characters.

The document must already have parsed with tomllib: the locator trusts the syntax and never raises on valid TOML.
"""

from __future__ import annotations

import bisect
import re
import sys
from collections.abc import Iterator
from typing import NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Path = tuple  # tuple[str | int, ...]


class Pos(NamedTuple):
    line: int
    col: int
    value_line: int
    value_col: int


_BARE = re.compile(r"[A-Za-z0-9_-]+")
_WS = " \t"


class _Scanner:
    def __init__(self, src: str) -> None:
        self.s = src
        self.i = 0
        self.n = len(src)
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", src)]
        self.out: dict[tuple, Pos] = {}
        self.aot: dict[tuple, int] = {}

    # -- positions ---------------------------------------------------------------------------------------------------
    def lc(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        return line + 1, offset - self.starts[line] + 1

    def record(self, path: tuple, key_off: int, value_off: int | None = None) -> None:
        kl, kc = self.lc(key_off)
        vl, vc = self.lc(value_off if value_off is not None else key_off)
        self.out[path] = Pos(kl, kc, vl, vc)

    def record_default(self, path: tuple, key_off: int) -> None:
        if path not in self.out:
            self.record(path, key_off)

    # -- lexing ------------------------------------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def skip_ws(self) -> None:
        while self.i < self.n and self.s[self.i] in _WS:
            self.i += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            while self.i < self.n and self.s[self.i] != "\n":
                self.i += 1

    def skip_ws_nl_comments(self) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in _WS or c in "\r\n":
                self.i += 1
            elif c == "#":
                self.skip_comment()
            else:
                break

    def skip_string_or_comment(self) -> str:
        """Past the comment or string that starts at ``self.i``, if one does; returns how it opens (``#``, a quote or
        three quotes), "" where none starts. A one-line string left open ends at its line's end; a multi-line one left
        open leaves ``self.i`` past the document's end."""
        c = self.peek()
        if c == "#":
            self.skip_comment()
            return c
        if c not in ('"', "'"):
            return ""
        start = self.i
        self.string()
        if self.s.startswith(c * 3, start):
            return c * 3
        nl = self.s.find("\n", start, self.i)
        if nl != -1:
            self.i = nl
        return c

    def skip_to_eol(self) -> None:
        while self.i < self.n and self.s[self.i] != "\n":
            self.i += 1

    def string(self) -> str:
        """Read a string at ``self.i`` (any of the four kinds) and return its value (escapes roughly decoded)."""
        s = self.s
        if s.startswith('"""', self.i) or s.startswith("'''", self.i):
            q = s[self.i : self.i + 3]
            j = s.find(q, self.i + 3)
            while q == '"""' and j != -1 and _escaped(s, j):
                j = s.find(q, j + 1)
            j = self.n if j == -1 else j
            while j + 3 < self.n and s[j + 3] == q[0]:  # up to two quotes may close the string's content
                j += 1
            value = s[self.i + 3 : j]
            self.i = j + 3
            return value
        q = s[self.i]
        j = self.i + 1
        while j < self.n and s[j] != q:
            if q == '"' and s[j] == "\\":
                j += 1
            j += 1
        raw = s[self.i + 1 : j]
        self.i = j + 1
        if q == '"' and "\\" in raw:
            try:
                raw = tomllib.loads(f'k = "{raw}"')["k"]
            except tomllib.TOMLDecodeError:
                pass
        return raw

    def key_segment(self) -> str:
        c = self.peek()
        if c in "\"'":
            return self.string()
        m = _BARE.match(self.s, self.i)
        if not m:  # not valid TOML; stop gracefully
            self.i += 1
            return ""
        self.i = m.end()
        return m.group()

    def dotted_key(self) -> list[str]:
        keys = [self.key_segment()]
        self.skip_ws()
        while self.peek() == ".":
            self.i += 1
            self.skip_ws()
            keys.append(self.key_segment())
            self.skip_ws()
        return keys

    # -- values ------------------------------------------------------------------------------------------------------
    def value(self, path: tuple) -> None:
        """Skip the value at ``self.i``, recording the positions of everything inside it under ``path``."""
        c = self.peek()
        if c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        elif c in "\"'":
            self.string()
        else:
            m = re.compile(r"[^\s,\]\}#]+").match(self.s, self.i)
            end = m.end() if m else self.i + 1
            token = self.s[self.i : end]
            self.i = end
            # a date and a time may be separated by a space: 1979-05-27 07:32:00Z
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", token) and self.peek() == " " and self.peek(1).isdigit():
                m = re.compile(r" [0-9:.+\-Zz]+").match(self.s, self.i)
                if m:
                    self.i = m.end()

    def array(self, path: tuple) -> None:
        for idx, _ in enumerate(self.items("]")):
            sub = (*path, idx)
            self.record(sub, self.i)
            self.value(sub)

    def inline_table(self, path: tuple) -> None:
        for _ in self.items("}"):
            self.keyval(path)

    def items(self, close: str) -> Iterator[None]:
        """Stops at each item of the array or inline table that opens at ``self.i``, then moves past ``close``
        (commas, newlines and comments between items are skipped). A generator, so that nesting costs no deeper
        recursion than ``value`` itself."""
        self.i += 1  # [ or {
        while True:
            self.skip_ws_nl_comments()
            c = self.peek()
            if c == close or c == "":
                self.i += 1
                return
            if c == ",":
                self.i += 1
                continue
            yield

    def keyval(self, table: tuple) -> None:
        start = self.i
        keys = self.dotted_key()
        for k in range(1, len(keys)):
            self.record_default((*table, *keys[:k]), start)
        self.skip_ws()
        if self.peek() == "=":
            self.i += 1
        self.skip_ws()
        path = (*table, *keys)
        self.record(path, start, self.i)
        self.value(path)

    # -- document ----------------------------------------------------------------------------------------------------
    def header(self) -> tuple:
        start = self.i
        is_aot = self.s.startswith("[[", self.i)
        self.i += 2 if is_aot else 1
        self.skip_ws()
        keys = self.dotted_key()
        self.skip_ws()
        self.i += 2 if is_aot else 1
        resolved: list = []
        for k, key in enumerate(keys):
            resolved.append(key)
            t = tuple(resolved)
            last = k == len(keys) - 1
            if last and is_aot:
                self.aot[t] = self.aot.get(t, 0) + 1
                resolved.append(self.aot[t] - 1)
                self.record_default(t, start)
            elif t in self.aot:
                resolved.append(self.aot[t] - 1)
            elif not last:
                self.record_default(t, start)
        path = tuple(resolved)
        self.record(path, start)
        return path

    def document(self) -> dict[tuple, Pos]:
        table: tuple = ()
        while True:
            self.skip_ws_nl_comments()
            if self.i >= self.n:
                return self.out
            if self.peek() == "[":
                table = self.header()
            else:
                self.keyval(table)
            self.skip_ws()
            self.skip_comment()
            if self.i < self.n and self.s[self.i] not in "\r\n":  # not valid TOML; resynchronise
                self.skip_to_eol()


def _escaped(s: str, j: int) -> bool:
    backslashes = 0
    k = j - 1
    while k >= 0 and s[k] == "\\":
        backslashes += 1
        k -= 1
    return backslashes % 2 == 1


def locate(src: str) -> dict[tuple, Pos]:
    """Map every key path in the TOML document ``src`` to :class:`Pos` (see the module docstring)."""
    return _Scanner(src).document()


def unclosed(src: str) -> tuple[int, int, str] | None:
    """(line, col, "[" or "{") of the innermost bracket that ``src`` opens and never closes, or None.

    For a syntax error at the end of a document: the place to fix is where the array or inline table was opened.
    Strings and comments are skipped; the document need not be valid TOML.
    """
    sc = _Scanner(src)
    stack: list[tuple[int, str]] = []
    while sc.i < sc.n:
        if sc.skip_string_or_comment():
            continue
        c = sc.s[sc.i]
        if c in "[{":
            stack.append((sc.i, c))
        elif c in "]}" and stack:
            stack.pop()
        sc.i += 1
    if not stack:
        return None
    off, c = stack[-1]
    line, col = sc.lc(off)
    return line, col, c


def open_multiline(src: str) -> tuple[int, int] | None:
    """(line, col) of a multi-line string (three double or three single quotes) that ``src`` opens and never
    closes, or None.

    For "unterminated string" at the end of a document: the place to fix is where the string opens, not the end."""
    sc = _Scanner(src)
    while sc.i < sc.n:
        c = sc.s[sc.i]
        if c == "#":
            sc.skip_comment()
        elif c in "\"'":
            start = sc.i
            if sc.s.startswith(c * 3, start):
                q = c * 3
                j = sc.s.find(q, start + 3)
                while q == '"""' and j != -1 and _escaped(sc.s, j):
                    j = sc.s.find(q, j + 1)
                if j == -1:
                    return sc.lc(start)
                sc.i = j + 3
                continue
            sc.string()
            nl = sc.s.find("\n", start, sc.i)  # a one-line string left open ends at its line's end
            if nl != -1:
                sc.i = nl
        else:
            sc.i += 1
    return None


def too_deep(src: str, limit: int) -> tuple[int, int] | None:
    """(line, col) of the first array or inline table nested more than ``limit`` levels deep, or None.

    TOML does not bound nesting, but every reader recurses on it: a spec nested hundreds of levels deep is refused
    with a location rather than a RecursionError. Strings and comments are skipped; the document need not be valid."""
    sc = _Scanner(src)
    depth = 0
    at_line_start = True
    while sc.i < sc.n:
        skipped = sc.skip_string_or_comment()
        if skipped:
            at_line_start = at_line_start and skipped == "#"
            continue
        c = sc.s[sc.i]
        if c == "\n":
            at_line_start = True
        elif c in "[{":
            if not (at_line_start and depth == 0):  # a [table] header is no nesting
                depth += 1
                if depth > limit:
                    return sc.lc(sc.i)
            else:
                end = sc.s.find("\n", sc.i)
                sc.i = sc.n if end == -1 else end
                continue
        elif c in "]}":
            depth = max(depth - 1, 0)
        elif c not in " \t\r":
            at_line_start = False
        sc.i += 1
    return None


def open_string(line: str) -> int | None:
    """The 1-based column of a one-line string that ``line`` opens and never closes, or None."""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "#":
            return None
        if c in "\"'":
            if line.startswith(c * 3, i):
                return None  # a multi-line string may go on
            j = i + 1
            while j < len(line) and line[j] != c:
                j += 2 if c == '"' and line[j] == "\\" else 1
            if j >= len(line):
                return i + 1
            i = j
        i += 1
    return None


def format_path(path: tuple) -> str:
    """``augmentations.train[1].transforms[0].size`` for ``("augmentations", "train", 1, "transforms", 0, "size")``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            seg = p if _BARE.fullmatch(p) else '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += ("." if out else "") + seg
    return out
