"""The run directory contract: a record that only a deliberate act changes.

- ``finetune`` / ``pretrain`` into an ``--output`` that already holds a run is refused unless ``--resume``
  (continue it) or ``--overwrite`` (replace it) is given; nothing in the directory changes.
- One writer at a time: ``run.lock`` holds the owner's pid, host and start time; a lock left by a dead
  process on this host is reported and taken over.
- ``config.json`` is written once, when the run starts (settings, the names the user set, where the run
  came from); a resume only appends to its ``resumes`` list.
- ``--resume`` continues from the run's own ``config.json``; flags that differ from it are an error,
  except :data:`RESUME_ALLOWED`.

``docs/training.md`` describes the contract for users.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlcli.atomic import write_json
from vlcli.config.resolve import EXPLICIT_KEY, META_KEYS, RESUMES_KEY, RUN_KEY
from vlcli.errors import VlcliError

CONFIG = "config.json"
STATUS = "status.json"
LOCK = "run.lock"
STATE = "LAST.state.pt"

RESUME_ALLOWED = frozenset({"epochs", "num_workers", "valid_batch_size"})
"""Settings a ``--resume`` may change: they extend the run or change how fast it goes, not what it computes."""
NOT_COMPARED = frozenset({"load", "from_scratch", "test_only", "dry", "submit", "deepspeed", "local_rank",
                          "allow_partial_load", "init_task_map", "resume", "overwrite"})
"""How a run was started, not what it is: never compared on ``--resume``."""

# Files a run writes; ``--overwrite`` removes these and nothing else the folder may hold.
RUN_FILE_PATTERNS = ("config.json", "status.json", "metrics.jsonl", "curves.png", "*.safetensors", "*.state.pt", "BEST.json",
                     "LAST.json", "Epoch[0-9][0-9].json", "test_metrics.json", "eval_metrics.json",
                     "*_predictions.json", "*_submit.json", "*_submit.csv", "*submission*", "*.tmp")
RUN_MARKERS = (CONFIG, "LAST.safetensors", "BEST.safetensors", STATE)


class RunDirError(VlcliError):
    """The run directory cannot be used as asked (exists, locked, not a directory, not writable)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _probe(path: Path) -> str:
    """'dir', 'file', 'missing' or 'other', never raising (over-long names, odd characters)."""
    try:
        if path.is_dir():
            return "dir"
        if path.exists():
            return "file"
        return "missing"
    except (OSError, ValueError):
        return "other"


def check_output(out: Path, option: str = "--output") -> None:
    """One-line errors for an output path that cannot become a run directory (before anything is written)."""
    kind = _probe(out)
    if kind == "file":
        raise RunDirError(f"{option} {out} is a file, not a directory; choose another {option}")
    if kind == "other":
        raise RunDirError(f"{option} {out}: not a usable path (too long or invalid characters); choose another {option}")
    if any(len(part.encode()) > 255 for part in out.parts):
        raise RunDirError(f"{option} {out}: a path component is longer than 255 bytes; choose a shorter {option}")
    probe = out
    while _probe(probe) == "missing" and probe != probe.parent:
        probe = probe.parent
    if _probe(probe) == "file":
        raise RunDirError(f"{option} {out}: {probe} is a file, so no directory can be made under it; "
                          f"choose another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{option} {out}: {probe} is not writable; choose a writable {option}")


def holds_run(out: Path) -> bool:
    return any(_probe(out / name) == "file" for name in RUN_MARKERS)


def _read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the run (None when missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_config(out: Path) -> dict[str, Any] | None:
    return _read_object(out / CONFIG)


@dataclass(frozen=True)
class Plan:
    """What a training command will do with its run directory."""

    mode: str  # new | overwrite | resume | restart
    note: str = ""


def plan(out: Path, command: str, resume: bool, overwrite: bool) -> Plan:
    """Decide (without writing) whether the run starts, continues or replaces one; refuse anything else."""
    if resume and overwrite:
        raise RunDirError("--resume continues the run in --output and --overwrite replaces it: give one of them")
    check_output(out)
    exists = holds_run(out)
    if resume:
        if (out / STATE).is_file():
            return Plan("resume")
        what = "holds a run but no resumable state (LAST.state.pt)" if exists else "holds no run"
        return Plan("restart", f"--resume: {out} {what}; starting the run from the beginning")
    if not exists:
        return Plan("new")
    if overwrite:
        return Plan("overwrite", f"--overwrite: replacing the run in {out}")
    raise RunDirError(f"--output {out} already holds a run; continue it with --resume, replace it with --overwrite, "
                      f"or choose another --output (`vlcli {command}` changes nothing there)")


# ------------------------------------------------------------------------------------------ lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_live(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (a lock from another host counts as live)."""
    try:
        pid, host = int(owner["pid"]), str(owner["host"])
    except (KeyError, TypeError, ValueError):
        return False
    return host != socket.gethostname() or (pid > 0 and _alive(pid))


class RunLock:
    """``run.lock`` in the run directory: one writer at a time, stale locks of dead processes reported."""

    def __init__(self, out: Path, command: str):
        self.path = out / LOCK
        self.command = command
        self.held = False
        self.note = ""

    def acquire(self) -> RunLock:
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                           "started": now_iso()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as exc:
                raise RunDirError(f"{self.path}: cannot create the run lock ({exc.strerror}); "
                                  "choose a writable --output") from exc
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
            self.held = True
            return self
        raise RunDirError(f"{self.path}: another process took the run lock at the same time; try again")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = {}, -1, "?"
        here = socket.gethostname()
        if host == here and pid > 0 and _alive(pid):
            raise RunDirError(f"{self.path.parent} is in use by `vlcli {owner.get('command', '?')}` (pid {pid} on "
                              f"{host}, since {owner.get('started', '?')}); wait for it or choose another --output")
        if host != here and host != "?":
            raise RunDirError(f"{self.path.parent} is locked by pid {pid} on host {host} (since "
                              f"{owner.get('started', '?')}); if that process is gone, delete {self.path}")
        self.note = (f"stale run lock in {self.path.parent} (pid {pid} on {host}, not running) taken over"
                     if pid > 0 else f"unreadable run lock {self.path} taken over")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ------------------------------------------------------------------------------------ the record


def _git_commit() -> dict[str, Any] | None:
    """The commit of the vlcli checkout this code runs from (None when installed from a package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


_invocation: list[str] | None = None


def set_invocation(argv: list[str]) -> None:
    """The command line as the CLI received it (``main(argv)`` may be called in-process, not from sys.argv)."""
    global _invocation
    _invocation = list(argv)


def provenance(command: str) -> dict[str, Any]:
    """Where a run (or a resume of it) came from: command line, versions, git commit, host, time."""
    import torch
    import transformers

    from vlcli import __version__

    return {
        "command": command,
        "argv": _invocation or [Path(sys.argv[0]).name, *sys.argv[1:]],
        "vlcli": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "git": _git_commit(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now_iso(),
    }


def write_config(out: Path, settings: Any, command: str, extra: dict[str, Any] | None = None) -> None:
    """``config.json`` of a new run: the settings, the names the user set, and the run's provenance."""
    data = settings.flat(mode="json")
    if settings.derived is not None:
        data[EXPLICIT_KEY] = settings.derived.explicit
    data[RUN_KEY] = {**provenance(command), **(extra or {})}
    data[RESUMES_KEY] = []
    write_json(out / CONFIG, data, indent=1)


def append_resume(out: Path, entry: dict[str, Any], command: str) -> None:
    """Add one record to config.json's ``resumes`` list; every other key stays as the run wrote it."""
    data = read_config(out)
    if data is None:
        return
    data.setdefault(RESUMES_KEY, []).append({**provenance(command), **entry})
    write_json(out / CONFIG, data, indent=1)


def read_status(out: Path) -> dict[str, Any] | None:
    """``status.json`` of a run (None when missing or unreadable)."""
    return _read_object(out / STATUS)


def write_status(out: Path, status: str, message: str = "") -> None:
    """``status.json``: running / finished / interrupted / failed, with the time (and the error of a failure)."""
    write_json(out / STATUS, {"status": status, "time": now_iso(), "message": message}, indent=1)


def resume_changes(run_values: dict[str, Any], values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(allowed, refused) changes of a ``--resume`` against the run's settings: ``{name: [run, now]}``."""
    allowed: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for name, value in values.items():
        if name in NOT_COMPARED or name in META_KEYS or run_values.get(name) == value:
            continue
        (allowed if name in RESUME_ALLOWED else refused)[name] = [run_values.get(name), value]
    return allowed, refused


def clear_run(out: Path) -> list[Path]:
    """Remove the files a run writes (``--overwrite``); other files in the folder stay."""
    removed = []
    for pattern in RUN_FILE_PATTERNS:
        for path in out.glob(pattern):
            if path.is_file():
                try:
                    path.unlink()
                except OSError as exc:
                    raise RunDirError(f"--overwrite: cannot remove {path} ({exc.strerror})") from exc
                removed.append(path)
    return removed


def make_dir(out: Path) -> bool:
    """Create the run directory; True if it was created now (so a run that fails to start can remove it)."""
    try:
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fix = "free some space" if exc.errno == errno.ENOSPC else "choose another --output"
        raise RunDirError(f"--output {out}: cannot create the directory ({exc.strerror}); {fix}") from exc
    return created


def remove_if_empty(out: Path) -> None:
    try:
        out.rmdir()
    except OSError:
        pass


def elapsed_since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)
