"""Check, before any model is built, that every data file a run reads exists.

A run that dies on a missing feature file after minutes of model loading (or hours of training, at
the first test batch) is the most common complaint about the original; :func:`preflight` lists all
missing files at once with the command or download that creates each. It only checks existence
(and that CLIP / image folders are non-empty): no large file is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlcli.data.features import FeatureError
from vlcli.data.layout import TASKS as LAYOUT_TASKS
from vlcli.data.layout import DataPath, layout_for, merge_paths


class MissingDataError(FeatureError):
    """One or more files or folders a run needs are missing; the message lists each with its fix."""

    def __init__(self, missing: list[tuple[DataPath, str]], data_root: str):
        self.missing = missing
        n = len(missing)
        lines = [f"{n} data path{'s' if n != 1 else ''} missing (data_root = {data_root}):"]
        for item, issue in missing:
            lines.append(f"  - {item.name}: {item.path} {issue}; fix: {item.creates}")
        super().__init__("\n".join(lines))


def _problem(item: DataPath) -> str | None:
    """Why ``item`` is unusable, or None when it looks fine (existence checks only)."""
    path = item.path
    if item.kind in ("annotation", "butd"):
        if path.is_file():
            return None
        return "is a folder, not a file" if path.is_dir() else "does not exist"
    if item.kind == "clip" and path.suffix == ".h5":  # a consolidated store
        return None if path.is_file() else "does not exist"
    if not path.is_dir():
        return "is a file, not a folder" if path.exists() else "does not exist"
    pattern = "*.h5" if item.kind == "clip" else "*"
    if next(path.glob(pattern), None) is None:
        return f"is empty (no {pattern} files)"
    return None


def _pairs(tasks_and_splits: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = tasks_and_splits.items() if isinstance(tasks_and_splits, Mapping) else tasks_and_splits
    out: list[tuple[str, str]] = []
    for task, splits in items:
        if splits is None:
            continue
        for split in [splits] if isinstance(splits, str) else splits:
            if split:
                out.append((task, split))
    return out


def required_paths(
    settings: Any,
    tasks_and_splits: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]],
    overrides: Mapping[str, str] | None = None,
) -> list[DataPath]:
    """Every annotation file and feature file/folder the given task splits read, without repeats."""
    items: list[DataPath] = []
    for task, split in _pairs(tasks_and_splits):
        if task in LAYOUT_TASKS:
            items += layout_for(settings, task, split, overrides).paths()
        else:  # the other tasks describe their own files
            from vlcli.tasks import get_task

            items += get_task(task).required_paths(settings, split)
    return merge_paths(items)


def preflight(
    settings: Any,
    tasks_and_splits: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]],
    overrides: Mapping[str, str] | None = None,
) -> None:
    """Raise one :class:`MissingDataError` listing every missing file of the run, or return None.

    ``tasks_and_splits``: ``{"vqa": ["karpathy_train", "karpathy_val"], ...}`` or ``[("vqa", "karpathy_train"), ...]``;
    a split may itself be comma-separated (``"train,valid"``).
    """
    check_paths(settings, required_paths(settings, tasks_and_splits, overrides))


def check_paths(settings: Any, items: Iterable[DataPath]) -> None:
    """One :class:`MissingDataError` listing every unusable path of ``items``, or return None."""
    missing = [(item, issue) for item in items if (issue := _problem(item))]
    if missing:
        try:
            root = str(settings.get("data_root"))
        except (KeyError, AttributeError):
            root = "datasets"
        raise MissingDataError(missing, root)
