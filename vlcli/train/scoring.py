"""Scoring a task's predictions on one of its splits with the evaluators of :mod:`vlcli.metrics`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

PRIMARY = {"vqa": "accuracy", "gqa": "accuracy", "nlvr": "accuracy", "caption": "CIDEr"}
"""The metric that selects BEST for each task (multitask: the average over tasks)."""


def score(task: str, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], settings: Any) -> dict:
    """Metrics of ``predictions`` against the dataset's ``references`` (ids that have references only).

    VQA uses the human answers of the question records (``answers``) with the evaluator version of
    ``vqa_eval_mode`` (``vlt5``, what the paper reports); records without them (e.g. test-dev) are
    scored by the soft score of ``label`` (the original's "top-k score"). Returns ``{}`` when no
    prediction has a reference (a split without labels).
    """
    scored = {k: v for k, v in predictions.items() if _labelled(task, references.get(k))}
    if not scored:
        return {}
    if task == "vqa":
        from vlcli.metrics.vqa import DEFAULT_MODE, vqa_accuracy

        with_answers = {k: references[k] for k in scored if references[k].get("answers")}
        if len(with_answers) == len(scored):
            result = vqa_accuracy(scored, with_answers, mode=DEFAULT_MODE)
            out = {"accuracy": result["overall"]}
            out.update({f"accuracy/{t}": v for t, v in result["perAnswerType"].items()})
            return out
        total = sum(float((references[k].get("label") or {}).get(str(v).strip(), 0.0)) for k, v in scored.items())
        return {"accuracy": round(100.0 * total / len(scored), 2)}
    if task == "gqa":
        from vlcli.metrics.gqa import gqa_accuracy

        return {"accuracy": gqa_accuracy(scored, {k: references[k] for k in scored})["accuracy"]}
    if task == "nlvr":
        from vlcli.metrics.nlvr import nlvr_metrics

        result = nlvr_metrics(scored, {k: references[k] for k in scored})
        return {"accuracy": result["accuracy"], "consistency": result["consistency"]}
    if task == "caption":
        from vlcli.metrics.caption import caption_metrics

        return dict(caption_metrics(scored, {k: references[k] for k in scored}))
    raise ValueError(f"no evaluator for task {task!r}")


def _labelled(task: str, reference: Any) -> bool:
    """Whether a reference can score a prediction (test / submission splits have none)."""
    if reference is None:
        return False
    if task == "vqa":
        return bool(reference.get("answers") or reference.get("label"))
    if task in ("gqa", "caption"):
        return bool(reference)
    return True


def average_primary(metrics: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean of each task's primary metric (CIDEr counted ×100, like accuracies); None when nothing scored."""
    values = []
    for task, result in metrics.items():
        key = PRIMARY.get(task)
        if key and key in result:
            values.append(result[key] * (100.0 if key == "CIDEr" else 1.0))
    return sum(values) / len(values) if values else None


def selection_score(metrics: Mapping[str, Mapping[str, float]], best_metric: str = "average") -> float | None:
    """The number BEST maximises: ``average`` of the primary metrics, ``TASK`` (its primary metric) or ``TASK/METRIC``."""
    if best_metric == "average":
        return average_primary(metrics)
    task, _, name = best_metric.partition("/")
    result = metrics.get(task, {})
    name = name or PRIMARY.get(task, "")
    return result.get(name)
