"""GQA accuracy as VL-T5 / VL-Adapter compute it (spec §4.3): exact, case-sensitive string match.

Score = sum over predictions of ``label.get(prediction, 0)`` / number of predictions (GQA labels are a
single answer with score 1.0). ``normalize=True`` strips and lower-cases both sides first (spec [REC]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlcli.metrics.base import check_ids, official_round


def _label_dict(label: Mapping[str, float] | str) -> dict[str, float]:
    if isinstance(label, str):
        return {label: 1.0}
    return {str(k): float(v) for k, v in label.items()}


def gqa_accuracy(
    predictions: Mapping[Any, str],
    labels: Mapping[Any, Mapping[str, float] | str],
    normalize: bool = False,
    digits: int = 2,
) -> dict[str, Any]:
    """``question_id -> answer`` against ``question_id -> {answer: score}`` (or the answer string).

    Returns ``accuracy`` (percentage, rounded to ``digits``), ``score`` (the summed label scores) and
    ``questions``. Every prediction needs a label; labelled questions without a prediction are an error.
    """
    check_ids(predictions, labels, "question(s)", "unknown question ids")
    total = 0.0
    for qid, pred in predictions.items():
        label = _label_dict(labels[qid])
        if normalize:
            label = {k.strip().lower(): v for k, v in label.items()}
            pred = pred.strip().lower()
        total += label.get(pred, 0.0)
    n = len(predictions)
    return {
        "accuracy": official_round(100 * total / n, digits) if n else 0.0,
        "score": total,
        "questions": n,
    }
