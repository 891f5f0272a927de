"""Resolution of the ``load`` argument to one checkpoint file.

Accepted forms (checked in this order):

* ``auto`` - the most recently written checkpoint in the run directory ``output``;
* a run directory - its ``BEST`` checkpoint, else ``LAST``;
* a checkpoint file with its extension (``.safetensors`` or ``.pth``);
* a checkpoint path without extension (the original's convention) - ``.safetensors`` first, then ``.pth``.

When nothing matches, the error lists every path that was tried and what the folder contains.
"""

from __future__ import annotations

from pathlib import Path

from vlcli.config.types import PATH_SHOWN, clipped, path_problem
from vlcli.errors import CheckpointNotFoundError
from vlcli.paths import is_dir, is_file, user_path

SAFETENSORS_SUFFIX = ".safetensors"
PTH_SUFFIX = ".pth"
CHECKPOINT_EXTENSIONS = (SAFETENSORS_SUFFIX, PTH_SUFFIX)  # preference order when the extension is omitted
RUN_CONFIG = "config.json"


def _entries(folder: Path) -> list[Path] | None:
    """The entries of ``folder``; None when it is no directory or cannot be read."""
    if not is_dir(folder):
        return None
    try:
        return list(folder.iterdir())
    except OSError:
        return None


def _listing(folder: Path, limit: int = 12) -> str:
    entries = _entries(folder)
    if entries is None:
        return f"{folder}/ does not exist or cannot be read"
    names = sorted(p.name for p in entries)
    if not names:
        return f"{folder}/ is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{folder}/ contains: {shown}"


def _checkpoints_in(folder: Path) -> list[tuple[int, str, Path]]:
    """``(mtime_ns, name, path)`` of the checkpoint files directly in ``folder``."""
    found = []
    for p in _entries(folder) or []:
        if p.suffix in CHECKPOINT_EXTENSIONS and is_file(p):
            try:
                found.append((p.stat().st_mtime_ns, p.name, p))
            except OSError:  # removed meanwhile
                continue
    return found


def resolve_load(load: str | None, output: str | Path) -> Path | None:
    """Return the checkpoint file that ``load`` names (None when ``load`` is None)."""
    if load is None:
        return None
    if load.strip() == "":
        raise CheckpointNotFoundError("--load is empty; give a run directory, a checkpoint path or auto")
    if load == "auto":
        folder = Path(output)
        found = _checkpoints_in(folder)
        if not found:
            raise CheckpointNotFoundError(
                f"--load auto: no checkpoint (*.safetensors, *.pth) in the run directory {folder}; "
                f"{_listing(folder)}"
            )
        return max(found)[2]
    problem = path_problem(load)
    if problem is not None:
        raise CheckpointNotFoundError(f"--load {clipped(load, PATH_SHOWN)}: {problem}")
    path = user_path(load)
    tried: list[Path] = []
    if is_dir(path):
        for stem in ("BEST", "LAST"):
            for ext in CHECKPOINT_EXTENSIONS:
                candidate = path / f"{stem}{ext}"
                tried.append(candidate)
                if is_file(candidate):
                    return candidate
        raise CheckpointNotFoundError(
            f"--load {load}: the run directory has no BEST or LAST checkpoint; looked for "
            f"{', '.join(str(t) for t in tried)}; {_listing(path)}"
        )
    if path.suffix in CHECKPOINT_EXTENSIONS:
        if is_file(path):
            return path
        tried.append(path)
    else:
        for ext in CHECKPOINT_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            tried.append(candidate)
            if is_file(candidate):
                return candidate
    raise CheckpointNotFoundError(
        f"--load {load}: no checkpoint found; looked for {', '.join(str(t) for t in tried)}; "
        f"{_listing(path.parent if str(path.parent) else Path('.'))}"
    )


def run_config_for(checkpoint: Path) -> Path | None:
    """The saved ``config.json`` of the run a checkpoint belongs to, if there is one."""
    candidate = checkpoint.parent / RUN_CONFIG
    return candidate if is_file(candidate) else None
