"""Atomic file writes: a temporary file beside the target, then ``os.replace`` (no half-written outputs)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError


class WriteError(VlcliError):
    """An output file cannot be written (permissions, full disk, missing folder that cannot be made)."""


def default_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` itself uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it normal permissions and move it over ``path``.

    The folder is created when missing; on any failure the temporary file is removed and an existing
    ``path`` is left untouched. The temporary name ends in ``.tmp`` (a scan for ``*.h5`` skips it).
    OS errors become a one-line :class:`WriteError` naming the file.
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
        yield tmp  # errors of the caller's writing pass through unchanged
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc}); choose a writable folder") from exc


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then move it over ``path`` (see :func:`atomic_path`).

    OS errors while writing (a full disk) are reported as :class:`WriteError` as well.
    """
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc}); choose a writable folder") from exc
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = None) -> Path:
    """``data`` as UTF-8 JSON, atomically."""

    def dump(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, default=str)

    return atomic_write(path, dump)
