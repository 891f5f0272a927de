"""File-system probes of user-given paths that never raise.

A user value such as ``~nouser/x`` (unknown user), a 300-byte file name or a path with a NUL byte makes
``Path.expanduser`` / ``Path.is_file`` raise (RuntimeError, OSError ENAMETOOLONG, ValueError). Every probe
of a user value goes through here, so such a value reads as "not there" and the caller's one-line message
about the option applies.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_path(value: str | os.PathLike[str]) -> Path:
    """``Path(value)`` with ``~`` expanded where that works (an unknown ``~user`` stays as written)."""
    path = Path(value)
    try:
        return path.expanduser()
    except (RuntimeError, OSError, ValueError):
        return path


def is_file(path: str | os.PathLike[str]) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_dir(path: str | os.PathLike[str]) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def exists(path: str | os.PathLike[str]) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False
