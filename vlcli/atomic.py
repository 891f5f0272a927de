"""Atomic file writes: a temporary file beside the target, then ``os.replace`` (no half-written outputs)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError


class WriteError(VlcliError):
    """An output file cannot be written (permissions, full disk, missing folder that cannot be made)."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file in ``path``'s folder, then move it over ``path``.

    The folder is created when missing; on any failure the temporary file is removed and an existing
    ``path`` is left untouched. OS errors become a one-line :class:`WriteError` naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc}); choose a writable folder") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc}); choose a writable folder") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = None) -> Path:
    """``data`` as UTF-8 JSON, atomically."""

    def dump(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, default=str)

    return atomic_write(path, dump)
