"""Scoring a task's predictions on one of its splits, and the number that selects BEST.

Each task's evaluator lives on its :class:`vlcli.tasks.base.Task` (``score``, ``primary_metric``,
``labelled``); the metric code itself is in :mod:`vlcli.metrics`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from vlcli.tasks import get_task


def score(task: str, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], settings: Any,
          **options: Any) -> dict:
    """Metrics of ``predictions`` against the dataset's ``references`` (ids that have references only).

    ``options``: evaluator options of the task (``mode`` of the VQA evaluator). Returns ``{}`` when no
    prediction has a reference (a split without labels).
    """
    impl = get_task(task)
    scored = {k: v for k, v in predictions.items() if impl.labelled(references.get(k))}
    if not scored:
        return {}
    return impl.score(scored, {k: references[k] for k in scored}, settings, **options)


def primary(task: str) -> tuple[str, float]:
    """The metric of ``task`` that selects BEST and its factor to a 0-100 scale (CIDEr counts ×100)."""
    impl = get_task(task)
    return impl.primary_metric, (100.0 if impl.primary_metric == "CIDEr" else 1.0)


def average_primary(metrics: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean of each task's primary metric (CIDEr counted ×100, like accuracies); None when nothing scored."""
    values = []
    for task, result in metrics.items():
        key, factor = primary(task)
        if key in result:
            values.append(result[key] * factor)
    return sum(values) / len(values) if values else None


def selection_score(metrics: Mapping[str, Mapping[str, float]], best_metric: str = "average") -> float | None:
    """The number BEST maximises: ``average`` of the primary metrics, ``TASK`` (its primary metric) or ``TASK/METRIC``."""
    if best_metric == "average":
        return average_primary(metrics)
    task, _, name = best_metric.partition("/")
    result = metrics.get(task, {})
    name = name or primary(task)[0]
    return result.get(name)
