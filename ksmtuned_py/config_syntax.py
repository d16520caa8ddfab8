"""The configuration file's syntax: the shell assignments it may hold, read as data, never executed.

Accepted lines: blank lines, ``# comments`` (also after a value), ``KEY=value``
and ``export KEY=value``, with single and double quotes.  Anything that bash
would execute or expand is a :class:`ConfigError` naming ``file:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, NoReturn

from ksmtuned_py.errors import EX_CONFIG, UserError

_SYNTAX = "expected KEY=value, export KEY=value, a # comment or a blank line"
_LITERAL = "expected a literal value (the file is parsed, never executed)"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export[ \t]+")
_BLANK = " \t"


class ConfigError(UserError):
    """A configuration problem; ``line`` is set when it comes from a file line."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else ""
        super().__init__(where + message)
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Assignment:
    key: str
    value: str
    line: int


# --- the line parser -------------------------------------------------------------


def _value_problem(char: str, nxt: str) -> str:
    if char == "$":
        if nxt == "(":
            return "command substitution '$(' is not allowed"
        return "expansion with '$' is not allowed"
    if char == "`":
        return "command substitution with '`' is not allowed"
    if char == ";":
        return "';' (a second command on the line) is not allowed"
    if char in "&|":
        return f"'{char}' (a shell operator) is not allowed"
    if char in "<>":
        return f"'{char}' (a redirection) is not allowed"
    if char in "()":
        return f"'{char}' is not allowed"
    if char == "\0":
        return "a NUL byte is not allowed"
    return f"{char!r} is not allowed"


def _literal_dollar(nxt: str) -> bool:
    """Whether bash keeps a '$' followed by ``nxt`` as a plain character (e.g. ``^kvm$``)."""
    return nxt == "" or not (nxt.isascii() and (nxt.isalnum() or nxt in "_{([#?@*!$-'\""))


def _scan_value(
    line: str, start: int, path: str, lineno: int, exported: bool = False
) -> tuple[str, int]:
    """Read one shell word starting at ``start``; return (value, index after it)."""
    out: list[str] = []
    i, n = start, len(line)

    def fail(problem: str, expected: str = _LITERAL) -> NoReturn:
        raise ConfigError(f"{problem}; {expected}", path, lineno)

    while i < n:
        c = line[i]
        if c in _BLANK:
            break
        if c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                fail("unterminated single quote", "expected a closing ' on the same line")
            chunk = line[i + 1:end]
            if "\0" in chunk:
                fail("a NUL byte is not allowed")
            out.append(chunk)
            i = end + 1
        elif c == '"':
            i = _scan_double_quoted(line, i + 1, out, fail)
        elif c == "\\":
            if i + 1 >= n:
                fail("a '\\' at the end of a line (continuation) is not supported")
            if line[i + 1] == "\0":
                fail("a NUL byte is not allowed")
            out.append(line[i + 1])
            i += 2
        elif c == "$" and _literal_dollar(line[i + 1:i + 2]):
            out.append(c)
            i += 1
        elif c in "$`;&|<>()\0":
            fail(_value_problem(c, line[i + 1:i + 2]))
        elif c == "{" and exported:
            # `export` takes ordinary words: bash would brace-expand K={a,b} into two
            fail("an unquoted '{' after export is not supported", "expected the value in quotes")
        elif c == "~" and (i == start or line[i - 1] == ":"):
            fail("'~' (tilde expansion) is not supported", "expected a full path")
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def _scan_double_quoted(line: str, i: int, out: list[str], fail: Callable[..., NoReturn]) -> int:
    """The inside of a double-quoted string from ``i`` into ``out``; the index after the closing quote."""
    n = len(line)
    while True:
        if i >= n:
            fail("unterminated double quote", 'expected a closing " on the same line')
        d = line[i]
        if d == '"':
            return i + 1
        if d == "\\":
            if i + 1 >= n:
                fail("unterminated double quote", 'expected a closing " on the same line')
            e = line[i + 1]
            out.append(e if e in '$`"\\' else "\\" + e)
            i += 2
            continue
        if d == "$" and (line[i + 1:i + 2] == '"' or _literal_dollar(line[i + 1:i + 2])):
            out.append(d)
            i += 1
            continue
        if d in "$`\0":
            fail(_value_problem(d, line[i + 1:i + 2]))
        out.append(d)
        i += 1


def _parse_line(line: str, path: str, lineno: int) -> Assignment | None:
    n = len(line)
    i = 0
    while i < n and line[i] in _BLANK:
        i += 1
    if i >= n or line[i] == "#":
        return None
    m = _EXPORT.match(line, i)
    exported = m is not None
    if m:
        i = m.end()
    m = _NAME.match(line, i)
    if not m or m.end() >= n or line[m.end()] != "=":
        found = line.strip(_BLANK)
        if len(found) > 60:
            found = found[:57] + "..."
        for bad in ("$(", "`"):
            if bad in line:
                raise ConfigError(
                    f"{_value_problem(bad[0], bad[1:2])}; {_SYNTAX}", path, lineno
                )
        raise ConfigError(f"{_SYNTAX}, found {found!r}", path, lineno)
    key = m.group()
    value, i = _scan_value(line, m.end() + 1, path, lineno, exported)
    while i < n and line[i] in _BLANK:
        i += 1
    if i < n and line[i] != "#":
        c = line[i]
        if c in "$`;&|<>()\0":
            problem = _value_problem(c, line[i + 1:i + 2])
        else:
            problem = f"unexpected text after the value of {key}: {line[i:].rstrip()!r}"
        raise ConfigError(
            f"{problem}; expected a # comment or the end of the line "
            "(quote values that contain spaces)",
            path,
            lineno,
        )
    return Assignment(key, value, lineno)


def parse_text(text: str, path: str = "<config>") -> list[Assignment]:
    """All assignments of a configuration text, in order; ConfigError on bad syntax."""
    result = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        assignment = _parse_line(line, path, lineno)
        if assignment is not None:
            result.append(assignment)
    return result
