"""``vlcli runs``: what the run directories under a folder hold, read from their own records.

Each run is described from ``config.json`` (tasks, method, parameters, start), ``metrics.jsonl`` (epochs,
best score), ``status.json`` and ``run.lock`` (whether it finished, was interrupted, failed, or is running).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError
from vlcli.train import rundir

METHOD_FLAGS = (("use_hyperformer", "hyperformer"), ("use_compacter", "compacter"), ("use_lradapter", "lradapter"),
                ("use_adapter", "adapter"), ("use_lora", "lora"))


@dataclass
class RunInfo:
    """One row of ``vlcli runs``."""

    path: str
    name: str
    command: str
    tasks: list[str]
    method: str
    trainable_percent: float | None
    best_score: float | None
    best_epoch: int | None
    epochs_done: int
    epochs: int | None
    status: str
    started: str | None


def method_name(config: dict[str, Any]) -> str:
    """The PEFT method(s) a run's settings switch on (``full`` when none), e.g. ``lora (single)``."""
    names = [label for flag, label in METHOD_FLAGS if config.get(flag)]
    if (config.get("encoder_prompt_len") or 0) > 0 or (config.get("decoder_prompt_len") or 0) > 0:
        names.append("prompt")
    if not names:
        return "full" if config.get("unfreeze_language_model", True) else "frozen"
    if config.get("use_lora"):
        names[names.index("lora")] = "lora (single)" if config.get("use_single_lora") else "lora (per task)"
    return " + ".join(names)


def _records(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _status(path: Path, epochs_done: int, epochs: int | None) -> str:
    lock = path / rundir.LOCK
    if lock.is_file():
        try:
            owner = json.loads(lock.read_text(encoding="utf-8"))
            if rundir.lock_is_live(owner):
                return "running"
        except (OSError, ValueError):
            pass
    recorded = (rundir.read_status(path) or {}).get("status")
    if recorded == "running":  # no live owner: killed (power cut, OOM, SIGKILL) without saving
        return "interrupted"  # its resume point is the last epoch-end LAST
    if recorded in ("finished", "interrupted", "failed"):
        return recorded
    if epochs is not None and epochs_done >= epochs:
        return "finished"
    return "interrupted" if (path / rundir.STATE).is_file() else "unknown"


def describe(path: Path) -> RunInfo | None:
    """The row of the run in ``path``, or None when ``path`` holds no run."""
    config = rundir.read_config(path)
    if config is None:
        return None
    run = config.get("_run") or {}
    records = [r for r in _records(path) if isinstance(r.get("epoch"), int) and r["epoch"] >= 0]
    scored = [r for r in records if isinstance(r.get("score"), (int, float))]
    best = max(scored, key=lambda r: r["score"], default=None)
    tasks = config.get("tasks") or []
    epochs = config.get("epochs") if isinstance(config.get("epochs"), int) else None
    done = max((r["epoch"] + 1 for r in records), default=0)
    return RunInfo(
        path=str(path), name=config.get("run_name") or path.name, command=run.get("command", "?"),
        tasks=[tasks] if isinstance(tasks, str) else list(tasks), method=method_name(config),
        trainable_percent=(run.get("parameters") or {}).get("percent"),
        best_score=best["score"] if best else None, best_epoch=best["epoch"] + 1 if best else None,
        epochs_done=done, epochs=epochs, status=_status(path, done, epochs), started=run.get("started"))


def find_runs(root: Path) -> list[RunInfo]:
    """Every run directory at or below ``root`` (those with a config.json), newest start first."""
    try:
        if not root.is_dir():
            raise VlcliError(f"vlcli runs {root}: no such folder; give the folder that holds run directories (default snap)")
        configs = sorted(root.rglob(rundir.CONFIG))
    except OSError as exc:
        raise VlcliError(f"vlcli runs {root}: cannot read it ({exc.strerror})") from exc
    rows = [info for cfg in configs if (info := describe(cfg.parent)) is not None]
    return sorted(rows, key=lambda r: r.started or "", reverse=True)


def as_json(rows: list[RunInfo]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
