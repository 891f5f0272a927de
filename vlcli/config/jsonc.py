"""JSON with comments (``//`` and ``/* */``) and trailing commas, with precise error positions.

Profiles are written by hand, so a syntax error must name the file, line and column and say what
was expected. Comments and trailing commas are blanked out *in place* (same length, newlines kept),
so the positions that :mod:`json` reports on the cleaned text are the positions in the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlcli.errors import ProfileError


def _blank(chars: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if chars[k] != "\n":
            chars[k] = " "


def strip_jsonc(text: str, source: str = "<string>") -> str:
    """Return ``text`` with comments and trailing commas replaced by spaces (positions preserved)."""
    chars = list(text)
    n = len(text)
    i = 0
    last_comma: int | None = None  # index of a comma not yet followed by a significant token
    while i < n:
        c = text[i]
        if c == '"':
            last_comma = None
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    break  # json reports the unterminated string itself
                i += 1
            i += 1
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            end = text.find("\n", i)
            end = n if end == -1 else end
            _blank(chars, i, end)
            i = end
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            if end == -1:
                line, col = _line_col(text, i)
                raise ProfileError(f"{source}:{line}:{col}: unterminated /* comment; close it with */")
            _blank(chars, i, end + 2)
            i = end + 2
            continue
        if c in "}]":
            if last_comma is not None:
                chars[last_comma] = " "  # trailing comma
            last_comma = None
        elif c == ",":
            last_comma = i
        elif not c.isspace():
            last_comma = None
        i += 1
    return "".join(chars)


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def loads(text: str, source: str = "<string>") -> Any:
    """Parse JSONC text; a syntax error becomes a :class:`ProfileError` naming ``source:line:col``."""
    cleaned = strip_jsonc(text, source)
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError as exc:
        snippet = text.splitlines()[exc.lineno - 1].strip() if text.strip() else ""
        hint = f" near `{snippet[:60]}`" if snippet else ""
        raise ProfileError(f"{source}:{exc.lineno}:{exc.colno}: {exc.msg}{hint}") from None


def load(path: str | Path) -> Any:
    """Read and parse a JSONC file (see :func:`loads`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"profile file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile {p}: {exc}") from None
    return loads(text, str(p))
