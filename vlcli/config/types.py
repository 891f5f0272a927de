"""Value types of the settings that need more than pydantic's built-in parsing.

Each parser accepts what a user writes on the command line (strings) and what a profile holds (JSON
values), never uses ``eval``, and raises ``ValueError`` with a message that names the accepted forms.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

BOOL_WORDS = {
    "true": True, "t": True, "yes": True, "y": True, "1": True, "on": True,
    "false": False, "f": False, "no": False, "n": False, "0": False, "off": False,
}

KNOWN_TASKS = ("vqa", "gqa", "nlvr", "caption", "refcoco", "vcr", "cls")
"""Image-text tasks vlcli knows; every per-task module is keyed by these names."""


def parse_bool(value: Any) -> Any:
    """``str2bool`` semantics of the original: yes/no/true/false/t/f/y/n/1/0 (case-insensitive)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in BOOL_WORDS:
            return BOOL_WORDS[key]
        raise ValueError(f"'{value}' is not a boolean; use true/false (or yes/no, 1/0)")
    return value


def none_if_null(value: Any) -> Any:
    """Command-line spellings of "no value" for optional fields: ``none``/``null``/empty."""
    if isinstance(value, str) and value.strip().lower() in {"none", "null", ""}:
        return None
    return value


def parse_image_size(value: Any) -> tuple[int, int]:
    """``"448,448"``, ``"(448,448)"``, ``"448x448"``, ``[448, 448]`` or ``448`` -> ``(448, 448)``."""
    if isinstance(value, bool):
        raise ValueError("image_size must be H,W (for example 224,224)")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[\(\[]?\s*\d+\s*([,x×]\s*\d+\s*)?[\)\]]?", text):
            raise ValueError(f"'{value}' is not an image size; write H,W such as 224,224 or (224,224)")
        parts = re.findall(r"\d+", text)
    else:
        raise ValueError(f"'{value}' is not an image size; write H,W such as 224,224")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"image_size needs two values H,W; got {value!r}")
    try:
        h, w = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"image_size values must be integers; got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size values must be positive; got {value!r}")
    return (h, w)


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
                    f"'{text}' is not a count or a fraction; use e.g. 500 (first 500) or 0.1 (10 %)"
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
        raise ValueError(f"{value} is neither a count (integer) nor a fraction in (0, 1]")
    if isinstance(value, int):
        return -1 if value <= 0 else value
    raise ValueError(f"{value!r} is not a count or a fraction")


def parse_task_list(value: Any) -> list[str]:
    """Split ``"vqa,gqa nlvr"`` (commas and/or spaces) or a list into stripped, de-duplicated names."""
    if value is None:
        return []
    if isinstance(value, str):
        items = re.split(r"[,\s]+", value.strip())
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ValueError(f"tasks must be a comma-separated string or a list; got {value!r}")
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


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
                raise ValueError(f"'{item}' is not NAME=PATH (e.g. vqa.questions=/data/vqa/{{split}}.json)")
            out[name.strip()] = path.strip()
        return out
    raise ValueError(f"expected NAME=PATH pairs separated by commas, or a JSON object; got {value!r}")


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
            raise ValueError(f"'{value}' is not a worker count; use a number such as 4, or auto") from None
    raise ValueError(f"{value!r} is not a worker count; use a number such as 4, or auto")


Workers = Annotated[int | str, BeforeValidator(parse_workers)]
