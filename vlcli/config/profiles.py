"""Profiles: JSON-with-comments files of ``{argument: value}`` that merge left to right.

A profile is found by path (``--profile my/run.jsonc``) or by name among the built-in profiles
(``--profile single_adapter``). The built-in ones live in the repository's top-level ``profiles/``
and are copied into the installed package as ``vlcli/_profiles``. A profile may start from others
with ``"extends": "name"`` (or a list); the extended profiles are applied first.

The ``--adapter`` shorthand applies the *method part* of a recipe profile: its own keys, without the
experiment-wide settings it extends (``--adapter lora`` = the single-LoRA recipe's rank, scaling and
learning rate).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlcli.config import jsonc
from vlcli.errors import ProfileError
from vlcli.paths import is_file, user_path

PROFILE_SUFFIXES = (".jsonc", ".json")
EXTENDS_KEY = "extends"

ADAPTER_SHORTHANDS: dict[str, str | None] = {
    "adapter": "single_adapter",
    "hyperformer": "hyperformer",
    "compacter": "single_compacter",
    "lradapter": "single_lradapter",
    "lora": "single_lora",
    "prompt": "single_prompt",
    "none": None,
}
"""``--adapter X`` -> the profile whose method settings it applies (``none`` switches every method off)."""

METHOD_OFF: dict[str, Any] = {
    "use_adapter": False,
    "use_hyperformer": False,
    "use_compacter": False,
    "use_lradapter": False,
    "use_lora": False,
    "encoder_prompt_len": 0,
    "decoder_prompt_len": 0,
}


EXPERIMENT_KEYS = frozenset({"output", "run_name", "comment"})


@dataclass(frozen=True)
class ProfileLayer:
    """The values one profile file sets, with a label naming where they came from."""

    label: str
    path: Path
    values: dict[str, Any]


def builtin_dir() -> Path:
    """Folder of the built-in profiles (inside the installed package, else the checkout's ``profiles/``)."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_profiles"
    if packaged.is_dir():
        return packaged
    return here.parent / "profiles"


def builtin_names() -> list[str]:
    folder = builtin_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in PROFILE_SUFFIXES)


def find(ref: str) -> tuple[str, Path]:
    """Resolve a profile reference to ``(label, path)``; label is the name or the path given."""
    path = user_path(ref)
    if is_file(path):
        return str(ref), path
    looks_like_path = path.suffix in PROFILE_SUFFIXES or "/" in ref or "\\" in ref
    if not looks_like_path:
        for suffix in PROFILE_SUFFIXES:
            candidate = builtin_dir() / f"{ref}{suffix}"
            if is_file(candidate):
                return ref, candidate
    names = builtin_names()
    close = difflib.get_close_matches(ref, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    if looks_like_path:
        raise ProfileError(f"--profile {ref}: file not found; {hint}built-in profiles: {', '.join(names)}")
    raise ProfileError(f"--profile {ref}: no such built-in profile or file; {hint}built-in profiles: {', '.join(names)}")


def read(path: Path) -> dict[str, Any]:
    """Parse one profile file; it must hold a JSON object."""
    data = jsonc.load(path)
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a JSON object {{\"argument\": value, ...}}, not {type(data).__name__}")
    return data


def load(ref: str, follow_extends: bool = True, _stack: tuple[Path, ...] = ()) -> list[ProfileLayer]:
    """Load a profile (and, first, what it extends) as layers in application order."""
    label, path = find(ref)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise ProfileError(f"profile {label}: circular 'extends' ({chain})")
    data = read(path)
    layers: list[ProfileLayer] = []
    parents = data.pop(EXTENDS_KEY, None)
    if parents is not None and follow_extends:
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise ProfileError(f"{path}: 'extends' must be a profile name or a list of names")
        for parent in parents:
            base = parent if not (path.parent / parent).is_file() else str(path.parent / parent)
            layers.extend(load(base, True, (*_stack, resolved)))
    layers.append(ProfileLayer(f"profile:{label}", path, data))
    return layers


def adapter_layer(choice: str) -> ProfileLayer:
    """The layer that ``--adapter choice`` applies (method settings of its recipe profile)."""
    if choice not in ADAPTER_SHORTHANDS:
        close = difflib.get_close_matches(choice, list(ADAPTER_SHORTHANDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ProfileError(f"--adapter {choice}: unknown method; {hint}choose from {', '.join(ADAPTER_SHORTHANDS)}")
    name = ADAPTER_SHORTHANDS[choice]
    if name is None:
        return ProfileLayer("adapter:none", Path("-"), dict(METHOD_OFF))
    [layer] = load(name, follow_extends=False)
    values = dict(METHOD_OFF)
    # The method part only: where a run writes is not part of a method recipe.
    values.update({k: v for k, v in layer.values.items() if k not in EXPERIMENT_KEYS})
    return ProfileLayer(f"adapter:{choice} (profile {name})", layer.path, values)


def summary(path: Path) -> str:
    """First comment line of a profile: its one-line description."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text.startswith("//"):
                return text.lstrip("/").strip()
            if text and not text.startswith(("/*", "*")):
                break
    except OSError:
        pass
    return ""
