"""Value types of the settings that need more than pydantic's built-in parsing.

Each parser accepts what a user writes on the command line (strings) and what a profile holds (JSON
values), never uses ``eval``, and raises only ``ValueError`` (see :func:`parser`) with a message that names
the accepted forms. Messages quote user values through :func:`shown` / :func:`clipped` (printable, short);
:func:`path_problem` tells, from the text alone, why a value can never be a path.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

BOOL_WORDS = {
    "true": True, "t": True, "yes": True, "y": True, "1": True, "on": True,
    "false": False, "f": False, "no": False, "n": False, "0": False, "off": False,
}

KNOWN_TASKS = ("vqa", "gqa", "nlvr", "caption", "refcoco", "vcr", "cls")
"""Image-text tasks vlcli knows; every per-task module is keyed by these names."""

IMAGE_SIDE_MAX = 8192
"""Largest image side accepted by ``image_size`` (the original uses 224-448)."""


def printable(text: str) -> str:
    """``text`` with undecodable command-line bytes (lone surrogates) shown as ``\\udcff`` escapes.

    pydantic (and the terminal) must encode every message as UTF-8; a value such as ``$'\\xff'`` on a
    UTF-8 command line arrives as a lone surrogate and would make that encoding raise.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clipped(text: str, limit: int = 60) -> str:
    """``text`` for a one-line message: printable and at most about ``limit`` characters."""
    text = printable(text)
    return text if len(text) <= limit else f"{text[: limit - 10]}...{text[-6:]} ({len(text)} characters)"


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a one-line message (see :func:`clipped`)."""
    return clipped(repr(value), limit)


PATH_SHOWN = 240
"""How much of a path a message shows (a longer one is cut in the middle)."""
NAME_MAX = 255
"""Longest file name (bytes) of the file systems vlcli runs on."""
PATH_MAX = 4096
"""Longest path (bytes)."""


def path_problem(value: str) -> str | None:
    """Why ``value`` can never name a file (NUL byte, undecodable text, over-long name, unknown ``~user``), or None.

    Checked on the text alone, so validation reports it in one line instead of an OSError /
    RuntimeError / ValueError from the first file-system call that sees it.
    """
    if "\x00" in value:
        return "contains a NUL byte; remove it"
    try:
        encoded = os.fsencode(value)
    except UnicodeError:
        return "is not valid text (undecodable characters); retype it"
    if len(encoded) > PATH_MAX:
        return f"is {len(encoded)} bytes long; paths are limited to {PATH_MAX} bytes; use a shorter one"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > NAME_MAX:
        return f"has a {longest}-byte name in it; file names are limited to {NAME_MAX} bytes; shorten it"
    if value.startswith("~"):
        try:
            Path(value).expanduser()
        except (RuntimeError, OSError, KeyError):
            head = value.split("/", 1)[0]
            return f"{clipped(head)} names no user of this machine; write the path out in full"
    return None


def parser(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Make ``func`` fail only with a printable ``ValueError`` (which pydantic reports as a value error).

    TypeError / OverflowError / RecursionError from odd inputs would escape pydantic as exceptions;
    a message quoting an undecodable value would make pydantic itself raise.
    """

    @functools.wraps(func)
    def wrapped(value: Any) -> Any:
        try:
            return func(value)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(printable(str(exc)) or f"{func.__name__}: invalid value") from None

    return wrapped


@parser
def parse_bool(value: Any) -> Any:
    """``str2bool`` semantics of the original: yes/no/true/false/t/f/y/n/1/0 (case-insensitive)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in BOOL_WORDS:
            return BOOL_WORDS[key]
        raise ValueError(f"{shown(value)} is not a boolean; use true/false (or yes/no, 1/0)")
    return value


@parser
def none_if_null(value: Any) -> Any:
    """Command-line spellings of "no value" for optional fields: ``none``/``null``/empty."""
    if isinstance(value, str) and value.strip().lower() in {"none", "null", ""}:
        return None
    return value


@parser
def parse_image_size(value: Any) -> tuple[int, int]:
    """``"448,448"``, ``"(448,448)"``, ``"448x448"``, ``[448, 448]`` or ``448`` -> ``(448, 448)``."""
    if isinstance(value, bool):
        raise ValueError("image_size must be H,W (for example 224,224)")
    if isinstance(value, int):
        parts = [value]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[\(\[]?\s*\d+\s*([,x×]\s*\d+\s*)?[\)\]]?", text):
            raise ValueError(f"{shown(value)} is not an image size; write H,W such as 224,224 or (224,224)")
        parts = re.findall(r"\d+", text)
    else:
        raise ValueError(f"{shown(value)} is not an image size; write H,W such as 224,224")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"image_size needs two values H,W; got {shown(value)}")
    if any(isinstance(p, bool) or (isinstance(p, float) and not p.is_integer()) for p in parts):
        raise ValueError(f"image_size values must be integers; got {shown(value)}")
    try:
        h, w = (int(p) for p in parts)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"image_size values must be integers; got {shown(value)}") from None
    if not (1 <= h <= IMAGE_SIDE_MAX and 1 <= w <= IMAGE_SIDE_MAX):
        raise ValueError(f"image_size values must be >= 1 and <= {IMAGE_SIDE_MAX}; got {shown(value)}")
    return (h, w)


@parser
def parse_topk(value: Any) -> int | float:
    """``train_topk`` / ``valid_topk``: an integer count, a fraction in (0, 1], or <= 0 for all.

    ``"100"``/``100`` -> first 100 examples; ``"0.1"``/``0.1`` -> a seeded random 10 %;
    ``1.0`` -> 100 %; ``-1`` -> all. A non-integral value above 1 is ambiguous and rejected.
    """
    if isinstance(value, bool):
        raise ValueError("topk must be a count or a fraction, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"{shown(text)} is not a count or a fraction; use e.g. 500 (first 500) or 0.1 (10 %)"
                ) from None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("topk must be finite")
        if value <= 0:
            return -1
        if value <= 1:
            return value
        if value.is_integer():
            return int(value)
        raise ValueError(f"{shown(value)} is neither a count (integer) nor a fraction in (0, 1]")
    if isinstance(value, int):
        return -1 if value <= 0 else value
    raise ValueError(f"{shown(value)} is not a count or a fraction")


@parser
def parse_task_list(value: Any) -> list[str]:
    """Split ``"vqa,gqa nlvr"`` (commas and/or spaces) or a list into stripped, de-duplicated names."""
    if value is None:
        return []
    if isinstance(value, str):
        items = re.split(r"[,\s]+", value.strip())
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ValueError(f"tasks must be a comma-separated string or a list; got {shown(value)}")
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


@parser
def parse_path_map(value: Any) -> dict[str, str]:
    """``data_paths``: ``"vqa.questions=/data/q/{split}.json,coco.clip=feats/RN101"`` or a JSON object."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, str] = {}
        for item in (p.strip() for p in value.split(",")):
            if not item:
                continue
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"{shown(item)} is not NAME=PATH (e.g. vqa.questions=/data/vqa/{{split}}.json)")
            out[name.strip()] = path.strip()
        return out
    raise ValueError(f"expected NAME=PATH pairs separated by commas, or a JSON object; got {shown(value)}")


Bool = Annotated[bool, BeforeValidator(parse_bool)]
OptStr = Annotated[str | None, BeforeValidator(none_if_null)]
OptInt = Annotated[int | None, BeforeValidator(none_if_null)]
ImageSize = Annotated[
    tuple[int, int],
    BeforeValidator(parse_image_size),
    PlainSerializer(lambda v: f"{v[0]},{v[1]}", return_type=str),
]
TopK = Annotated[int | float, BeforeValidator(parse_topk)]
TaskList = Annotated[
    list[str], BeforeValidator(parse_task_list), PlainSerializer(lambda v: ",".join(v), return_type=str)
]
PathMap = Annotated[
    dict[str, str],
    BeforeValidator(parse_path_map),
    PlainSerializer(lambda v: ",".join(f"{k}={p}" for k, p in v.items()), return_type=str),
]


@parser
def parse_workers(value: Any) -> int | str:
    """``num_workers``: a count, or ``auto`` (chosen from the CPU cores when the run starts)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        raise ValueError("num_workers must be a count or auto")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{shown(value)} is not a worker count; use a number such as 4, or auto") from None
    raise ValueError(f"{shown(value)} is not a worker count; use a number such as 4, or auto")


Workers = Annotated[int | str, BeforeValidator(parse_workers)]
