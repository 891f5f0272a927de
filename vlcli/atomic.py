"""Atomic file writes: a temporary file beside the target, then ``os.replace`` (no half-written outputs).

Every OS refusal (a full disk, a read-only folder, a file where a folder should be, a folder where the
file should be, an over-long name) becomes one :class:`WriteError` line naming the target and the fix;
the previous file at the target stays as it was and no temporary file is left behind.
"""

from __future__ import annotations

import errno
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


_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space on that disk or write to another one",
    errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a component of the path is a file; remove it or choose another folder",
    errno.EEXIST: "a file is in the way of a folder; remove it or choose another folder",
    errno.EISDIR: "a folder is in the way of the file; remove it or choose another name",
    errno.ENAMETOOLONG: "choose a shorter file or folder name",
}


def write_error(path: str | os.PathLike[str], exc: OSError, cls: type[WriteError] = WriteError) -> WriteError:
    """A one-line ``cls`` (a :class:`WriteError`) for the OS refusing to write ``path``: what it said and the fix."""
    fix = _FIXES.get(exc.errno or 0, "check that the folder exists, is writable and has free space")
    reason = exc.strerror or str(exc).splitlines()[0]
    return cls(f"{path}: cannot write ({reason}); {fix}")


def default_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` itself uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_beside(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder (made when missing); ``.tmp`` so ``*.h5`` scans skip it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    os.close(fd)
    return Path(name)


def _about_output(exc: OSError, tmp: Path, path: Path) -> bool:
    """Whether an OSError raised while writing ``tmp`` concerns the output (not another file the caller read)."""
    name = exc.filename
    if not isinstance(name, (str, bytes, os.PathLike)):
        return True
    return Path(os.fsdecode(name)) in (tmp, path)


def _discard(tmp: Path) -> None:
    """Remove a temporary file; a failure here must not hide the error being reported."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it normal permissions and move it over ``path``.

    The folder is created when missing; on any failure the temporary file is removed and an existing
    ``path`` is left untouched. OS errors about the output (making the folder, writing the temporary file,
    moving it into place) become a one-line :class:`WriteError` naming ``path``; other errors of the
    caller (one naming an input file included) pass through unchanged.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        if _about_output(exc, tmp, path):
            raise write_error(path, exc) from exc
        raise
    except BaseException:
        _discard(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then move it over ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = None) -> Path:
    """``data`` as UTF-8 JSON, atomically."""

    def dump(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=indent, default=str)

    return atomic_write(path, dump)
